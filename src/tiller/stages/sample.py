"""Sampling K answers per prompt from a policy, ready to be ranked (InstructGPT: K = 4..9)."""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tiller.config import ConfigError, field
from tiller.data import PromptRecord, SampleSet, read_records, write_jsonl
from tiller.models import load_policy
from tiller.rollout import generate
from tiller.runs import done_metrics, fingerprint, write_manifest
from tiller.training import set_seed
from tiller.vllm_rollout import RolloutServer, VLLMConfig, rollout_server


@dataclass
class SampleConfig:
    k: int = field(4, help="answers per prompt (2..9)")
    n_prompts: int = field(300, help="prompts to sample (0: all of the split)")
    split: str = field("train", help="which split of prompts.jsonl to draw from ('' for all)")
    temperature: float = field(1.0, help="sampling temperature")
    top_p: float = field(1.0, help="nucleus sampling")
    max_new_tokens: int = field(40, help="longest answer in tokens")
    batch_size: int = field(64, help="sequences generated at once")
    dedupe: bool = field(False, help="drop sets whose K answers are all identical (nothing to rank)")
    seed: int = field(0, help="random seed (prompt choice and sampling)")
    mix_with: str = field("", help="a second policy that writes mix_k of the K answers (e.g. the SFT model, so "
                                   "comparisons contrast the newest policy with where it started)")
    mix_k: int = field(0, help="answers per prompt from mix_with (0..k-1)")
    sampler: Literal["loop", "vllm"] = field("loop", help="the decode loop, or the vLLM rollout server (vllm.*)")
    vllm: VLLMConfig = field(default_factory=VLLMConfig, help="the rollout server of sampler=vllm")

    def validate(self) -> None:
        if not 2 <= self.k <= 9:
            raise ConfigError(f"k must be between 2 and 9, got {self.k}")
        if not 0 <= self.mix_k < self.k or (self.mix_k and not self.mix_with):
            raise ConfigError(f"mix_k must be in 0..k-1 and needs mix_with, got mix_k={self.mix_k}")


def sample(cfg: SampleConfig, policy: str, prompts_path: Path, out: Path, force: bool = False) -> dict:
    """Write ``out`` (JSONL of SampleSet records) with K answers to each chosen prompt."""
    meta_dir = out.with_suffix(".manifest")
    inputs: dict[str, str | Path] = {"policy": policy, "prompts": prompts_path,
                                     **({"mix_with": cfg.mix_with} if cfg.mix_k else {})}
    fp = fingerprint("sample", cfg, inputs)  # the second policy's content counts too, not only its path
    if out.is_file() and not force and (done := done_metrics(meta_dir, fp)) is not None:
        return done
    set_seed(cfg.seed)
    records: list[PromptRecord] = [p for p in read_records(prompts_path, "prompt") if not cfg.split or p.split == cfg.split]
    if not records:
        raise ConfigError(f"{prompts_path}: no prompts in split {cfg.split!r}")
    random.Random(cfg.seed).shuffle(records)
    if cfg.n_prompts:
        records = records[: cfg.n_prompts]
    start = time.time()
    sources = [(str(policy), cfg.k - cfg.mix_k)] + ([(cfg.mix_with, cfg.mix_k)] if cfg.mix_k else [])
    answers: list[list[str]] = [[] for _ in records]
    ended: list[bool] = []
    n_tokens = 0
    server: RolloutServer | None = None
    with ExitStack() as servers:
        for who, n in sources:
            model, tok = load_policy(who, trainable=False)
            if cfg.sampler == "vllm":
                if server is None:  # started from the first policy; the second is pushed to it
                    server = servers.enter_context(rollout_server(cfg.vllm, model, tok,
                                                                  out.with_name(f".{out.name}.rollout"), who))
                server.sync(model, who)
            ro = generate(model, tok, [r.prompt for r in records], n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                          show_progress=True, server=server)
            for i in range(len(records)):
                answers[i] += ro.texts[i * n : (i + 1) * n]  # an empty answer is kept: it is what the model said
            n_tokens, ended = n_tokens + sum(len(x) for x in ro.response_ids), ended + list(ro.ended)
    sets = []
    for r, responses in zip(records, answers, strict=True):
        if cfg.dedupe and len(set(responses)) == 1:
            continue
        sets.append(SampleSet(id=r.id, prompt=r.prompt, responses=responses,
                              policy="+".join(f"{who}:{n}" for who, n in sources) if cfg.mix_k else str(policy),
                              user_id=r.user_id, family=r.family))
    write_jsonl(out, sets)
    seconds = time.time() - start
    metrics = {"sets": len(sets), "k": cfg.k, "seconds": seconds, "tokens_per_s": n_tokens / max(seconds, 1e-9),
               "ended_fraction": sum(ended) / max(len(ended), 1)}
    write_manifest(meta_dir, stage="sample", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                   inputs={k: str(v) for k, v in inputs.items()})
    return metrics
