"""Best-of-K rejection sampling then fine-tuning: the simple alternative to PPO for stage 3.

Each round samples K answers per prompt from the current policy, keeps the one the reward model scores
highest, and fine-tunes on those (as an SFT stage on "demonstrations" chosen by the RM). Expert iteration
/ RAFT / Llama 2's rejection-sampling fine-tuning are this loop.
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from tiller import distributed
from tiller.config import ConfigError, field
from tiller.data import Demonstration, read_records, write_jsonl
from tiller.models import load_policy, load_tokenizer
from tiller.rollout import answer_seeds, generate
from tiller.runs import atomic_dir, done_metrics, fingerprint, write_manifest
from tiller.scoring import CompositeReward, RewardSource
from tiller.stages.sft import SFTConfig, sft
from tiller.training import deepspeed_launch, start_processes
from tiller.vllm_rollout import RolloutServer, VLLMConfig, rollout_server


@dataclass
class BoNConfig:
    k: int = field(8, help="answers sampled per prompt; the RM keeps the best")
    rounds: int = field(1, help="sample-select-finetune rounds, each from the newest policy")
    n_prompts: int = field(400, help="prompts per round")
    temperature: float = field(1.0, help="sampling temperature")
    max_new_tokens: int = field(40, help="longest answer")
    prompt_split: str = field("train", help="split of prompts.jsonl to draw from")
    rewards: list[RewardSource] = field(default_factory=list, help="reward sources (default: the run's RM)")
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=2, lr=3e-4, valid_fraction=0.0),
                           help="fine-tuning settings for each round")
    sampler: Literal["loop", "vllm"] = field("loop", help="the decode loop, or the vLLM rollout server (vllm.*; "
                                                          "each round's policy is pushed to it)")
    vllm: VLLMConfig = field(default_factory=VLLMConfig, help="the rollout server of sampler=vllm")
    seed: int = field(0, help="random seed")

    def validate(self) -> None:
        if self.k < 2 or self.rounds < 1:
            raise ConfigError("k must be >= 2 and rounds >= 1")


PromptT = TypeVar("PromptT")


def select_best(prompts: list[PromptT], texts: list[str], scores: list[float],
                k: int) -> list[tuple[PromptT, str, float]]:
    """For each prompt, the answer with the highest score among its k consecutive samples."""
    out = []
    for i, p in enumerate(prompts):
        j = max(range(k), key=lambda j: scores[i * k + j])
        out.append((p, texts[i * k + j], scores[i * k + j]))
    return out


def best_of_n(cfg: BoNConfig, policy_path: str, prompts_path: Path, out: Path, log_dir: Path,
              rm_path: str | None = None, force: bool = False) -> dict:
    sources = cfg.rewards or ([RewardSource(kind="rm", path=rm_path, name="rm")] if rm_path else [])
    if not sources:
        raise ConfigError("bon needs a reward: pass --rm PATH or rewards=[...]")
    inputs: dict[str, str | Path] = {"policy": policy_path, "prompts": prompts_path,
                                     **{f"reward{i}": s.path for i, s in enumerate(sources)}}
    fp = fingerprint("bon", cfg, inputs)
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    pool = [p.prompt for p in read_records(prompts_path, "prompt") if p.split == cfg.prompt_split]
    if not pool:
        raise ConfigError(f"{prompts_path}: no prompts in split {cfg.prompt_split!r}")
    if deepspeed_launch():
        raise ConfigError("bon does not run under DeepSpeed (each round samples and then fine-tunes a new "
                          "model): launch with torchrun or configs/accelerate/ddp.yaml (docs/scaling.md)")
    start_processes()  # sampling is split over the ranks before the first fine-tuning sets up its accelerator
    reward = CompositeReward(sources, policy_tok=load_tokenizer(policy_path))  # scores the sampled tokens
    current, history, start = policy_path, [], time.time()
    work = out.with_name(f".{out.name}.rounds")
    server: RolloutServer | None = None
    with ExitStack() as servers:
        for r in range(1, cfg.rounds + 1):
            prompts = random.Random(f"{cfg.seed}-{r}").sample(pool, min(cfg.n_prompts, len(pool)))
            # 1. each data-parallel rank samples and scores its block of the prompts; every answer has its own
            # seeded stream, so the answers do not depend on the number of ranks
            model, tok = load_policy(current, trainable=False)  # sampling only: the checkpoint's dtype
            if cfg.sampler == "vllm":  # one server for every round, each round's policy pushed to it
                if server is None:
                    server = servers.enter_context(rollout_server(cfg.vllm, model, tok, work / "rollout", current))
                server.sync(model, current)
            lo, hi = distributed.shard_bounds(len(prompts))
            seeds = answer_seeds((cfg.seed, r), lo * cfg.k, (hi - lo) * cfg.k)
            ro = generate(model, tok, prompts[lo:hi], n=cfg.k, temperature=cfg.temperature,
                          max_new_tokens=cfg.max_new_tokens, row_seeds=seeds, show_progress=True, server=server)
            mine = reward.score([p for p in prompts[lo:hi] for _ in range(cfg.k)], ro.texts, ro.ended,
                                list(zip(ro.prompt_ids, ro.response_ids, strict=True)))[0].tolist()
            texts = [t for part in distributed.gather_objects(ro.texts) for t in part]
            scores = [x for part in distributed.gather_objects(mine) for x in part]
            # 2. keep the best answer to each prompt, 3. fine-tune on those (all ranks, data parallel)
            best = [(p, t, s) for p, t, s in select_best(prompts, texts, scores, cfg.k) if t.strip()]
            demos_path = work / f"best-r{r}.jsonl"
            if distributed.is_main():
                write_jsonl(demos_path, [Demonstration(p, t) for p, t, _ in best])
            distributed.barrier()
            round_out = work / f"policy-r{r}"
            m = sft(cfg.sft, current, demos_path, round_out, log_dir, force=force)
            history.append({"round": r, "mean_score_all": sum(scores) / len(scores),
                            "mean_score_best": sum(s for *_, s in best) / max(len(best), 1), **m})
            current = str(round_out)
    metrics = {**history[-1], "rounds": cfg.rounds, "seconds": time.time() - start}
    if distributed.is_main():
        model, tok = load_policy(current, trainable=False)  # re-saved as is, in its own dtype
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_manifest(tmp, stage="bon", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                           history=history, inputs={k: str(v) for k, v in inputs.items()})
    distributed.barrier()
    return metrics
