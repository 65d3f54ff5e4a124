"""Stage 3: RL from the reward model: PPO-ptx (InstructGPT eq. 2), and critic-free alternatives.

objective(phi) = E[r(x, y) - kl_coef * log(pi(y|x) / pi_SFT(y|x))] + ptx_coef * E_pretrain[log pi(x)]

Details follow openai/lm-human-preferences: the KL penalty is per token, the RM score lands on the last
response token, GAE with gamma 1 and lambda 0.95, whitened advantages, clipped policy and value losses,
an adaptive KL controller, logprobs at the sampling temperature, dropout off. The value model is a
*separate* network initialised from the reward model (InstructGPT section 3.5), trained with its own
optimiser. ``algo`` = reinforce | rloo | grpo share the rollout, reward and KL code and replace GAE with a
sequence-level advantage (a moving baseline, leave-one-out or group-normalised), no value model.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tiller.config import ConfigError, field
from tiller.data import read_records
from tiller.losses import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    masked_lm_loss,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from tiller.models import ScalarModel, load_policy
from tiller.rl import (
    EMA,
    RunningMoments,
    SequenceBatch,
    build_sequences,
    disable_dropout,
    has_dropout,
    old_logprobs,
    policy_forward,
    value_forward,
)
from tiller.rollout import generate
from tiller.runs import atomic_dir, fingerprint, is_done, read_manifest, write_manifest
from tiller.scoring import CompositeReward, RewardSource
from tiller.tracking import Tracker
from tiller.training import Checkpointer, make_accelerator, make_optimizer, progress, set_seed

GoldFn = Callable[[list[Any], list[str]], list[float]]


@dataclass
class PPOConfig:
    algo: Literal["ppo", "reinforce", "rloo", "grpo"] = field("ppo", help="ppo (GAE + value model) or a critic-free policy gradient")
    iterations: int = field(40, help="rollout batches (each: generate, score, update)")
    rollout_batch: int = field(64, help="prompts per rollout batch")
    group_size: int = field(1, help="answers per prompt (rloo/grpo need >= 2)")
    minibatch_size: int = field(32, help="sequences per optimiser step")
    grad_accum: int = field(1, help="micro-batches per minibatch (memory, not semantics)")
    ppo_epochs: int = field(4, help="passes over each rollout batch")
    lr: float = field(1e-4, help="policy learning rate")
    value_lr: float = field(3e-4, help="value model learning rate")
    temperature: float = field(1.0, help="sampling temperature (logprobs use the same)")
    top_p: float = field(1.0, help="nucleus sampling for rollouts")
    sampler: Literal["loop", "hf"] = field("loop", help="rollout sampler: a static-cache decode loop that also "
                                           "gives the old logprobs, or Hugging Face generate")
    compile_sampler: bool = field(False, help="torch.compile the loop sampler's decode step (one-time cost)")
    max_new_tokens: int = field(40, help="longest response")
    kl_coef: float = field(0.02, help="initial KL penalty beta (InstructGPT: 0.02)")
    adaptive_kl: bool = field(False, help="adapt kl_coef towards kl_target (lm-human-preferences)")
    kl_target: float = field(6.0, help="target KL (nats per response) for the adaptive controller")
    kl_horizon: float = field(10000.0, help="horizon of the adaptive controller, in episodes")
    gamma: float = field(1.0, help="discount")
    lam: float = field(0.95, help="GAE lambda")
    cliprange: float = field(0.2, help="policy ratio clip")
    cliprange_value: float = field(0.2, help="value clip")
    whiten_advantages: bool = field(True, help="normalise advantages per rollout batch")
    reward_scaling: bool = field(False, help="divide scores by their running standard deviation")
    missing_eos_penalty: float = field(0.0, help="subtracted from the score of answers cut off before <|end|>")
    reward_clip: float = field(0.0, help="clip scores to +-this (0: off)")
    ptx_coef: float = field(0.0, help="PPO-ptx gamma: weight of the pretraining log-likelihood (0: plain PPO)")
    ptx_batch_size: int = field(16, help="pretraining sequences per optimiser step")
    ptx_block: int = field(128, help="pretraining sequence length")
    ema_decay: float = field(0.0, help="EMA of policy weights saved as the result (InstructGPT: 0.992; 0: off)")
    rewards: list[RewardSource] = field(default_factory=list, help="reward sources (default: the run's RM)")
    rm_uncertainty: float = field(0.0, help="with an ensemble RM (and no rewards=[...]): reward = mean - this * std "
                                            "of the members' scores (Coste et al. 2023)")
    prompt_split: str = field("train", help="split of prompts.jsonl to train on")
    eval_every: int = field(10, help="iterations between evaluation points of the reward/KL curve (0: end only)")
    eval_prompts: int = field(64, help="held-out prompts (valid split) answered at each evaluation point")
    checkpoint_every: int = field(5, help="iterations between resumable checkpoints")
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if self.algo in ("rloo", "grpo") and self.group_size < 2:
            raise ConfigError(f"algo {self.algo} needs group_size >= 2")
        if (self.rollout_batch * self.group_size) % self.minibatch_size:
            raise ConfigError("rollout_batch * group_size must be a multiple of minibatch_size")
        if self.minibatch_size % self.grad_accum:
            raise ConfigError("minibatch_size must be a multiple of grad_accum")


@torch.no_grad()
def score_tokens(policy, ref, value_model, b: SequenceBatch, temperature: float,
                 sampled: list[torch.Tensor | None] | None = None, chunk: int = 64):
    """Old logprobs (from ``sampled`` where the sampler recorded them), reference logprobs and values of a
    rollout batch, in chunks. Each (B, R)."""
    refs, vals = [], []
    for i in range(0, len(b.input_ids), chunk):
        c = b.select(torch.arange(i, min(i + chunk, len(b.input_ids))))
        refs.append(policy_forward(ref, c, temperature)[0])
        vals.append(value_forward(value_model, c) if value_model is not None else torch.zeros_like(refs[-1]))
    lps = old_logprobs(policy, b, None if has_dropout(policy) else sampled, temperature, chunk)
    return lps, torch.cat(refs), torch.cat(vals)


def sampling(cfg: PPOConfig) -> dict[str, Any]:
    """``generate`` arguments of the configured sampler, the same for rollouts and evaluation points."""
    return dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                backend=cfg.sampler, compile=cfg.compile_sampler)


def sequence_advantages(algo: str, rewards: torch.Tensor, k: int, baseline: RunningMoments) -> torch.Tensor:
    """Per-sequence advantages for the critic-free algorithms. (N,)"""
    if algo == "rloo":
        return rloo_advantages(rewards, k)
    if algo == "grpo":
        return grpo_advantages(rewards, k)
    adv = rewards - baseline.mean  # REINFORCE with a moving-average baseline (Williams 1992)
    baseline.update(rewards)
    return adv


def ptx_loss(policy, blocks: torch.Tensor, it: int, step: int, cfg: PPOConfig, device) -> torch.Tensor:
    """Pretraining NLL per token on a batch drawn deterministically from (seed, iteration, step)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it * 1009 + step)
    idx = torch.randint(0, len(blocks), (cfg.ptx_batch_size,), generator=g)
    x = blocks[idx].to(device)
    return masked_lm_loss(policy(input_ids=x).logits, x)


def train_ppo(cfg: PPOConfig, policy_path: str, ref_path: str, prompts_path: Path, out: Path, log_dir: Path,
              rm_path: str | None = None, ptx_corpus: Path | None = None, gold_fn: GoldFn | None = None,
              force: bool = False) -> dict:
    """Run RL from ``policy_path`` against the reward sources; writes the policy to ``out``."""
    sources = cfg.rewards or ([RewardSource(kind="rm", path=rm_path, name="rm", uncertainty=cfg.rm_uncertainty)]
                              if rm_path else [])
    if not sources:
        raise ConfigError("ppo needs a reward: pass --rm PATH or rewards=[...] in the config")
    inputs = {"policy": policy_path, "ref": ref_path, "prompts": prompts_path,
              **{f"reward{i}": s.path for i, s in enumerate(sources) if s.kind == "rm"},
              **({"ptx": ptx_corpus} if ptx_corpus and cfg.ptx_coef else {})}
    fp = fingerprint(f"ppo-{cfg.algo}", cfg, inputs)
    if is_done(out, fp) and not force:
        return read_manifest(out)["metrics"]
    set_seed(cfg.seed)
    prompts = [p.prompt for p in read_records(prompts_path, "prompt") if p.split == cfg.prompt_split]
    eval_set = [p.prompt for p in read_records(prompts_path, "prompt") if p.split == "valid"][: cfg.eval_prompts]
    if not prompts:
        raise ConfigError(f"{prompts_path}: no prompts in split {cfg.prompt_split!r}")
    policy, tok = load_policy(policy_path)
    ref, _ = load_policy(ref_path)
    ref.eval().requires_grad_(False)
    disable_dropout(policy)
    reward = CompositeReward(sources)
    value_model = None
    if cfg.algo == "ppo":  # value function initialised from the (first) reward model; of an ensemble, member 0
        init = next(s.path for s in sources if s.kind == "rm") if any(s.kind == "rm" for s in sources) else policy_path
        value_model = ScalarModel.from_pretrained(init, tok)
        disable_dropout(value_model)
    blocks = None
    if cfg.ptx_coef:
        from tiller.stages.pretrain import pack, read_corpus

        if ptx_corpus is None:
            raise ConfigError("ptx_coef > 0 needs a pretraining corpus (--ptx-corpus)")
        blocks = pack(read_corpus(ptx_corpus), tok, cfg.ptx_block)
    acc = make_accelerator()
    opt = make_optimizer(policy, cfg.lr, betas=(0.9, 0.999))
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    ema = EMA(policy, cfg.ema_decay) if cfg.ema_decay else None
    score_stats, baseline = RunningMoments(), RunningMoments()
    if value_model is not None:
        v_opt = make_optimizer(value_model, cfg.value_lr, betas=(0.9, 0.999))
        policy, opt, value_model, v_opt = acc.prepare(policy, opt, value_model, v_opt)
    else:
        policy, opt = acc.prepare(policy, opt)
    ref.to(acc.device)
    for obj in (kl_ctl, score_stats, baseline, *([ema] if ema else [])):
        acc.register_for_checkpointing(obj)
    ckpt = Checkpointer(out.with_name(f".{out.name}.ckpt"), acc)
    stale = ckpt.peek()
    if stale is not None and stale.get("fingerprint") != fp and not force:  # another config: no resume point
        print(f"note: {ckpt.folder} was written with another config or inputs; starting over", flush=True)
    if force or (stale is not None and stale.get("fingerprint") != fp):
        ckpt.clear()
    state = ckpt.load() or {"iteration": 0, "curve": []}
    tracker = Tracker(log_dir, f"ppo-{out.name}", cfg.report_to)
    k, n_seq = cfg.group_size, cfg.rollout_batch * cfg.group_size
    bar = progress(cfg.iterations, f"{cfg.algo} ({out.name})")
    bar.update(state["iteration"])
    start, totals = time.time(), {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    curve: list[dict] = state["curve"]
    stats: dict[str, float] = {}

    def evaluate_point(it: int) -> None:
        if not eval_set:
            return
        pol = acc.unwrap_model(policy)
        torch.manual_seed(cfg.seed + 7)
        ro = generate(pol, tok, eval_set, batch_size=cfg.rollout_batch, **sampling(cfg))
        b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id).to(acc.device)
        lp, rlp, _ = score_tokens(pol, ref, None, b, cfg.temperature, ro.logprobs)
        total, _ = reward.score(eval_set, ro.texts)
        point = {"iteration": it, "episodes": it * n_seq, "kl": float(((lp - rlp) * b.mask).sum(1).mean()),
                 "rm_score": float(total.mean())}
        if gold_fn is not None:
            gold = gold_fn(eval_set, ro.texts)
            point["gold_score"] = sum(gold) / len(gold)
        curve.append(point)
        tracker.log({f"eval/{k_}": v for k_, v in point.items() if k_ not in ("iteration", "episodes")}, it)

    if state["iteration"] == 0 and not curve:
        evaluate_point(0)
    for it in range(state["iteration"], cfg.iterations):
        t0 = time.time()
        # 1. rollout: prompts chosen from (seed, iteration) so a resumed run sees the same ones
        batch_prompts = random.Random(f"{cfg.seed}-{it}").choices(prompts, k=cfg.rollout_batch)
        torch.manual_seed(cfg.seed * 100_003 + it)
        ro = generate(acc.unwrap_model(policy), tok, batch_prompts, n=k, batch_size=n_seq, **sampling(cfg))
        t1 = time.time()
        # 2. score
        flat_prompts = [p for p in batch_prompts for _ in range(k)]
        scores, parts = reward.score(flat_prompts, ro.texts)
        raw_scores = scores.clone()
        ended = torch.tensor(ro.ended)
        if cfg.missing_eos_penalty:
            scores = torch.where(ended, scores, scores - cfg.missing_eos_penalty)
        if cfg.reward_scaling:
            score_stats.update(scores)
            scores = scores / max(score_stats.std, 1e-6)
        if cfg.reward_clip:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        t2 = time.time()
        # 3. KL-penalised per-token rewards
        b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id).to(acc.device)
        old_lp, ref_lp, old_values = score_tokens(policy, ref, value_model, b, cfg.temperature, ro.logprobs)
        rewards, kl = kl_penalized_rewards(scores.to(acc.device), old_lp, ref_lp, b.mask, kl_ctl.value)
        # 4. advantages
        if cfg.algo == "ppo":
            advantages, returns = gae(rewards, old_values, b.mask, cfg.gamma, cfg.lam)
        else:
            seq = sequence_advantages(cfg.algo, scores.to(acc.device) - kl_ctl.value * kl.sum(1), k, baseline)
            advantages, returns = seq[:, None] * b.mask, torch.zeros_like(b.mask)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, b.mask)
        # 5. epochs of clipped updates over minibatches
        stats = train_epochs(cfg, acc, policy, opt, value_model, v_opt if value_model is not None else None,
                             b, old_lp, old_values, advantages, returns, blocks, it)
        if ema:
            ema.update(acc.unwrap_model(policy))
        # 6. KL control, on the mean summed KL of this batch (lm-human-preferences)
        mean_kl = float(kl.sum(1).mean())
        kl_ctl.update(mean_kl, n_seq)
        t3 = time.time()
        totals["generation"] += t1 - t0
        totals["scoring"] += t2 - t1
        totals["training"] += t3 - t2
        metrics = {"objective/kl": mean_kl, "objective/kl_coef": kl_ctl.value,
                   "objective/score": float(raw_scores.mean()), "objective/score_std": float(raw_scores.std()),
                   "objective/non_score_reward": float(-(kl_ctl.value * kl).sum(1).mean()),
                   "policy/ended_fraction": float(ended.float().mean()),
                   "policy/response_length": float(b.mask.sum(1).mean()),
                   "time/generation": t1 - t0, "time/scoring": t2 - t1, "time/training": t3 - t2,
                   "charts/episodes_per_s": n_seq / (t3 - t0), **stats,
                   **{f"objective/score_{n}": float(v.mean()) for n, v in parts.items() if len(parts) > 1}}
        tracker.log(metrics, it + 1)
        bar.update(1)
        bar.set_postfix(score=f"{metrics['objective/score']:.2f}", kl=f"{mean_kl:.2f}")
        if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
            evaluate_point(it + 1)
        if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            ckpt.save({"iteration": it + 1, "curve": curve, "fingerprint": fp})
    bar.close()
    final = acc.unwrap_model(policy)
    if ema:
        ema.copy_to(final)
    evaluate_point(cfg.iterations)
    result = {**metrics, **read_curve_only(curve),
              "time/total": time.time() - start, **{f"time/{k_}_total": v for k_, v in totals.items()},
              "episodes": cfg.iterations * n_seq} if cfg.iterations > state["iteration"] else read_curve_only(curve)
    tracker.close()
    with atomic_dir(out) as tmp:
        final.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if value_model is not None:
            acc.unwrap_model(value_model).save_pretrained(tmp / "value")
        (tmp / "curve.json").write_text(json.dumps(curve, indent=2))
        write_manifest(tmp, stage=f"ppo-{cfg.algo}", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=result,
                       inputs={k_: str(v) for k_, v in inputs.items()})
    ckpt.clear()
    return result


def read_curve_only(curve: list[dict]) -> dict:
    return {f"eval/{k}": v for k, v in curve[-1].items()} if curve else {}


def train_epochs(cfg: PPOConfig, acc, policy, opt, value_model, v_opt, b: SequenceBatch, old_lp, old_values,
                 advantages, returns, blocks, it: int) -> dict[str, float]:
    """``ppo_epochs`` passes of clipped policy (+ value, + ptx) updates over shuffled minibatches."""
    n = len(b.input_ids)
    micro = cfg.minibatch_size // cfg.grad_accum
    g = torch.Generator().manual_seed(cfg.seed * 7919 + it)
    sums: dict[str, float] = {}
    count, step = 0, 0
    policy.train()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, cfg.minibatch_size):
            for m in range(cfg.grad_accum):
                idx = order[start + m * micro : start + (m + 1) * micro].to(acc.device)
                mb = b.select(idx)
                lp, logits = policy_forward(policy, mb, cfg.temperature)
                pg_loss, st = ppo_policy_loss(lp, old_lp[idx], advantages[idx], mb.mask, cfg.cliprange)
                loss = pg_loss
                row = {"loss/policy": pg_loss.item(), "policy/clipfrac": float(st["clipfrac"]),
                       "policy/approx_kl": float(st["approx_kl"]), "val/ratio": float(st["ratio"]),
                       "policy/entropy": float(masked_mean(entropy_from_logits(logits.detach()), mb.mask))}
                if blocks is not None:
                    lm = ptx_loss(policy, blocks, it, step * cfg.grad_accum + m, cfg, acc.device)
                    loss = loss + cfg.ptx_coef * lm
                    row["loss/ptx"] = lm.item()
                acc.backward(loss / cfg.grad_accum)
                if value_model is not None:
                    v = value_forward(value_model, mb)
                    vf_loss, vst = ppo_value_loss(v, old_values[idx], returns[idx], mb.mask, cfg.cliprange_value)
                    acc.backward(vf_loss / cfg.grad_accum)
                    row.update({"loss/value": vf_loss.item(), "val/clipfrac": float(vst["clipfrac"]),
                                "val/error": float(vst["error"])})
                for key, val in row.items():
                    sums[key] = sums.get(key, 0.0) + val
                count += 1
            acc.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if value_model is not None:
                acc.clip_grad_norm_(value_model.parameters(), 1.0)
                v_opt.step()
                v_opt.zero_grad(set_to_none=True)
            step += 1
    return {key: val / max(count, 1) for key, val in sums.items()}
