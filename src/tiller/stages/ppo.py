"""Stage 3: RL from the reward model: PPO-ptx (InstructGPT eq. 2), and critic-free alternatives.

objective(phi) = E[r(x, y) - kl_coef * log(pi(y|x) / pi_SFT(y|x))] + ptx_coef * E_pretrain[log pi(x)]

Details follow openai/lm-human-preferences: the KL penalty is per token, the RM score lands on the last
response token (scored from the tokens as sampled; an answer cut off before its end marker loses
``missing_eos_penalty``), GAE with gamma 1 and lambda 0.95, whitened advantages, clipped policy and value
losses, an adaptive KL controller, logprobs at the sampling temperature, dropout off. The value model is a
*separate* network initialised from the reward model with its normalisation folded into the head
(InstructGPT section 3.5), trained with its own optimiser. ``algo`` = reinforce | rloo | grpo share the
rollout, reward and KL code and replace GAE with a per-answer advantage from the score alone (a moving
baseline, leave-one-out or group-normalised) minus the KL still to come, no value model.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from tiller import distributed
from tiller.adapters import LORA_HELP, LoraConfig, adapter_disabled, apply_lora, save_model
from tiller.config import ConfigError, field
from tiller.data import read_records
from tiller.losses import (
    AdaptiveKLController,
    FixedKLController,
    MovingBaseline,
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    kl_to_go,
    masked_lm_loss,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from tiller.models import (
    ScalarModel,
    SharedValueModel,
    added_token_ids,
    enable_gradient_checkpointing,
    load_policy,
)
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
    whiten_across_ranks,
)
from tiller.rollout import answer_seeds, generate
from tiller.runs import atomic_dir, done_metrics, fingerprint, write_manifest
from tiller.scoring import CompositeReward, RewardSource
from tiller.sharding import Checkpoint, clip_grad_norm_, full_state_dict, gathered, shard
from tiller.tracking import Tracker
from tiller.training import (
    CHECKPOINTING_HELP,
    PRECISION_HELP,
    Checkpointer,
    Precision,
    autocast,
    deepspeed_launch,
    make_accelerator,
    make_optimizer,
    progress,
    set_seed,
    start_processes,
)
from tiller.vllm_rollout import RolloutServer, VLLMConfig, rollout_server

ANSWERS_FILE = "curve-answers.jsonl"  # the answers of each evaluation point, for eval/ to judge


@dataclass
class PPOConfig:
    algo: Literal["ppo", "reinforce", "rloo", "grpo"] = field("ppo", help="ppo (GAE + value model) or a critic-free policy gradient")
    iterations: int = field(40, help="rollout batches (each: generate, score, update)")
    rollout_batch: int = field(64, help="prompts per rollout batch")
    group_size: int = field(1, help="answers per prompt (rloo/grpo need >= 2)")
    minibatch_size: int = field(32, help="sequences per optimiser step")
    grad_accum: int = field(1, help="micro-batches per minibatch (memory, not semantics: losses are normalised by "
                                    "the minibatch's tokens, and the ptx batch is drawn once per optimiser step)")
    ppo_epochs: int = field(4, help="passes over each rollout batch")
    lr: float = field(1e-4, help="policy learning rate")
    value_lr: float = field(3e-4, help="value model learning rate")
    temperature: float = field(1.0, help="sampling temperature, > 0 (logprobs, KL and entropy use the same)")
    top_p: float = field(1.0, help="must be 1: PPO's ratio and KL are of the unfiltered distribution, so nucleus "
                                   "sampling would be off-policy (sampling for ranking and best-of-n may filter)")
    sampler: Literal["loop", "hf", "vllm"] = field("loop", help="rollout sampler: a static-cache decode loop that "
                                                   "also gives the old logprobs, Hugging Face generate, or the vLLM "
                                                   "rollout server (vllm.*; weights pushed after every update)")
    vllm: VLLMConfig = field(default_factory=VLLMConfig, help="the rollout server of sampler=vllm")
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
    whiten_advantages: Literal["auto", "token", "sequence", "off"] = field(
        "auto", help="auto: per token for ppo (lm-human-preferences), off for reinforce/rloo/grpo (RLOO's groups "
                     "already sum to 0, GRPO's are already normalised); sequence (critic-free only): normalise the "
                     "answers' advantages over the batch, each answer weighing once whatever its length")
    baseline_decay: float = field(0.9, help="reinforce: decay of the exponential moving-average baseline")
    reward_scaling: bool = field(False, help="divide scores by their running standard deviation")
    missing_eos_penalty: float = field(1.0, help="subtracted from the score of answers that did not end with "
                                                 "<|end|> (cut off by max_new_tokens; lm-human-preferences)")
    reward_clip: float = field(0.0, help="clip scores to +-this (0: off)")
    ptx_coef: float = field(0.0, help="PPO-ptx gamma: weight of the pretraining log-likelihood (0: plain PPO)")
    ptx_batch_size: int = field(16, help="pretraining sequences per optimiser step")
    ptx_block: int = field(128, help="pretraining sequence length")
    ema_decay: float = field(0.0, help="EMA of policy weights, updated every optimiser step with bias correction, "
                                       "saved as the result (InstructGPT: 0.992; 0: off)")
    rewards: list[RewardSource] = field(default_factory=list, help="reward sources (default: the run's RM)")
    rm_uncertainty: float = field(0.0, help="with an ensemble RM (and no rewards=[...]): reward = mean - this * std "
                                            "of the members' scores (Coste et al. 2023)")
    prompt_split: str = field("train", help="split of prompts.jsonl to train on")
    eval_every: int = field(10, help="iterations between evaluation points of the reward/KL curve (0: end only)")
    eval_prompts: int = field(64, help="held-out prompts (valid split) answered at each evaluation point")
    checkpoint_every: int = field(5, help="iterations between resumable checkpoints")
    mixed_precision: Precision = field("no", help=PRECISION_HELP)
    gradient_checkpointing: bool = field(False, help=CHECKPOINTING_HELP)
    lora: LoraConfig = field(default_factory=LoraConfig, help=LORA_HELP + "; the reference is then the policy with "
                             "its adapter disabled (no second copy) and the value model gets an adapter too")
    value_backbone: Literal["own", "shared"] = field(
        "own", help="own: the value model is a separate network from the RM; shared (with lora): a second adapter "
                    "and a head on the policy's backbone, one copy of the weights for policy, reference and value "
                    "(one process, no gradient checkpointing; the head starts at zero)")
    sharding: Literal["none", "fsdp"] = field(
        "none", help="under several processes: none (each holds whole models, DDP) or fsdp (FSDP2: policy, value and "
                     "reference sharded, each rank holds 1/N of their weights, gradients and optimiser state)")
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if self.value_backbone == "shared" and not self.lora.enabled:
            raise ConfigError("value_backbone=shared needs a LoRA policy (lora.r > 0)")
        if self.value_backbone == "shared" and self.gradient_checkpointing:
            raise ConfigError("value_backbone=shared cannot train with gradient_checkpointing: the backward would "
                              "recompute the value's blocks under the policy's adapter")
        if self.sharding == "fsdp" and self.lora.enabled:
            raise ConfigError("sharding=fsdp is for full fine-tuning: a LoRA run keeps its frozen base whole on each "
                              "process (use sharding=none)")
        if self.sharding == "fsdp" and self.sampler == "vllm":
            raise ConfigError("sampler=vllm with sharding=fsdp is not supported yet: the push would gather the "
                              "whole policy on one process (use sampler=loop)")
        if self.sharding == "fsdp" and self.ema_decay:
            raise ConfigError("sharding=fsdp with ema_decay is not supported yet")
        if self.algo in ("rloo", "grpo") and self.group_size < 2:
            raise ConfigError(f"algo {self.algo} needs group_size >= 2")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 for RL, got {self.temperature}: greedy decoding has no "
                              "distribution to compute logprobs, the KL or the PPO ratio from")
        if self.top_p != 1.0:
            raise ConfigError(f"top_p must be 1.0 for RL, got {self.top_p}: the PPO ratio and the KL are computed on "
                              "the unfiltered distribution, so nucleus samples would be off-policy")
        if (self.rollout_batch * self.group_size) % self.minibatch_size:
            raise ConfigError("rollout_batch * group_size must be a multiple of minibatch_size")
        if self.minibatch_size % self.grad_accum:
            raise ConfigError("minibatch_size must be a multiple of grad_accum")
        if self.ptx_coef and self.ptx_batch_size % self.grad_accum:
            raise ConfigError("ptx_batch_size must be a multiple of grad_accum (one ptx batch per optimiser step)")
        if self.algo == "ppo" and self.whiten_advantages == "sequence":
            raise ConfigError("whiten_advantages=sequence is for reinforce/rloo/grpo; ppo whitens per token")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")

    def whitening(self) -> str:
        """The resolved ``whiten_advantages``: token, sequence or off."""
        if self.whiten_advantages == "auto":
            return "token" if self.algo == "ppo" else "off"
        return self.whiten_advantages


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


def sequence_advantages(algo: str, scores: torch.Tensor, k: int, baseline: MovingBaseline) -> torch.Tensor:
    """Per-answer advantages of the critic-free algorithms, from the scores alone (the KL is a term of its
    own, :func:`tiller.losses.kl_to_go`: inside GRPO's std it would turn tiny KL differences between tied
    answers into unit-size advantages). (N,)"""
    if algo == "rloo":
        return rloo_advantages(scores, k)
    if algo == "grpo":
        return grpo_advantages(scores, k)
    return baseline.advantages(scores)  # REINFORCE with a moving-average baseline (Williams 1992)


def shaped_scores(cfg: PPOConfig, scores: torch.Tensor, ended: torch.Tensor, score_stats: RunningMoments) -> torch.Tensor:
    """The reward's score after the missing-EOS penalty, optional running-std scaling and clipping. (N,)"""
    if cfg.missing_eos_penalty:
        scores = torch.where(ended, scores, scores - cfg.missing_eos_penalty)
    if cfg.reward_scaling:
        score_stats.update(scores)
        scores = scores / max(score_stats.std, 1e-6)
    if cfg.reward_clip:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    return scores


def advantages_and_returns(cfg: PPOConfig, scores: torch.Tensor, old_lp: torch.Tensor, ref_lp: torch.Tensor,
                           values: torch.Tensor, mask: torch.Tensor, beta: float, baseline: MovingBaseline,
                           rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, returns, per-token KL), each (n, R) for this process's ``rows`` of the rollout.

    ``scores`` (N,) are the whole rollout's, on every data-parallel rank: baselines, RLOO/GRPO groups and
    sequence whitening see all answers; the per-token tensors (n, R) are this rank's rows only, and token
    whitening takes its statistics over all ranks (:func:`tiller.rl.whiten_across_ranks`).
    ppo: per-token rewards ``-beta * KL`` plus the score on the last token, then GAE against the values.
    Critic-free: the answer's advantage from its score (:func:`sequence_advantages`) minus ``beta`` times the
    KL still to come from each token, the same KL-penalised return as ppo's rewards with gamma 1."""
    if cfg.algo == "ppo":
        rewards, kl = kl_penalized_rewards(scores[rows], old_lp, ref_lp, mask, beta)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    else:
        kl = (old_lp - ref_lp) * mask
        seq = sequence_advantages(cfg.algo, scores, cfg.group_size, baseline)
        if cfg.whitening() == "sequence":
            seq = (seq - seq.mean()) / (seq.std() + 1e-8)
        advantages, returns = seq[rows, None] * mask - beta * kl_to_go(kl, mask), torch.zeros_like(mask)
    if cfg.whitening() == "token":
        advantages = whiten_across_ranks(advantages, mask)
    return advantages, returns, kl


def check_world(cfg: PPOConfig, world: int) -> None:
    """The batch sizes must split evenly over ``world`` data-parallel ranks: every rank then runs the same
    number of forwards and backwards (DDP's collectives pair them up) and holds whole RLOO/GRPO groups."""
    if world == 1:
        return
    if cfg.value_backbone == "shared":
        raise ConfigError("value_backbone=shared runs in one process: under DDP the value adapter inside the policy "
                          "would not be synced; use value_backbone=own")
    if cfg.rollout_batch % world:
        raise ConfigError(f"rollout_batch {cfg.rollout_batch} must be a multiple of the {world} processes")
    if cfg.minibatch_size % (world * cfg.grad_accum):
        raise ConfigError(f"minibatch_size {cfg.minibatch_size} must be a multiple of processes x grad_accum "
                          f"= {world * cfg.grad_accum}")
    if cfg.ptx_coef and cfg.ptx_batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"ptx_batch_size {cfg.ptx_batch_size} must be a multiple of processes x grad_accum "
                          f"= {world * cfg.grad_accum}")


def ptx_batch(blocks: torch.Tensor, cfg: PPOConfig, it: int, step: int) -> torch.Tensor:
    """The pretraining blocks of optimiser step ``step`` of iteration ``it``: drawn from (seed, it, step)
    alone, so a resumed run and any ``grad_accum`` see the same ones. (ptx_batch_size, ptx_block)"""
    g = torch.Generator().manual_seed(hash((cfg.seed, it, step)) % 2**62)  # ints hash alike in every process
    return blocks[torch.randint(0, len(blocks), (cfg.ptx_batch_size,), generator=g)]


@dataclass
class Models:
    policy: Any
    tok: Any
    ref: Any
    value: ScalarModel | SharedValueModel | None
    reward: CompositeReward


def load_models(cfg: PPOConfig, policy_path: str, ref_path: str, sources: list[RewardSource]) -> Models:
    """The trained policy (fp32), the frozen reference, the reward and, for ppo, the value model.

    The reference runs in the policy's dtype, not its checkpoint's: its logprobs enter the objective
    (the KL), and a bf16 reference against an fp32 policy would put rounding noise into every token's
    reward and a KL above 0 at iteration 0. The value model is a separate network initialised from the
    first summed reward model that reads the policy's tokens (InstructGPT section 3.5), with the RM's
    normalisation folded into its head so values start on the scale of the rewards they predict; with no
    such RM (other vocabulary, only rules, functions or URLs) it starts from the policy with a zero head."""
    policy: Any
    policy, tok = load_policy(policy_path, trainable=True)
    new_ids = added_token_ids(policy_path, tok)
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora, new_token_ids=new_ids)
    if cfg.lora.enabled and str(ref_path) == str(policy_path):
        ref: Any = AdapterDisabled(policy)  # the base under the adapter is the reference: no second copy
    else:
        ref, _ = load_policy(ref_path, dtype=next(policy.parameters()).dtype, trainable=False)
    disable_dropout(policy)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    reward = CompositeReward(sources, policy_tok=tok)
    value: ScalarModel | SharedValueModel | None = None
    if cfg.algo == "ppo" and cfg.value_backbone == "shared":
        value = SharedValueModel(policy, cfg.lora, new_token_ids=new_ids)
    elif cfg.algo == "ppo":
        init = next((s.path for s, by_ids in zip(sources, reward.by_ids, strict=True)
                     if s.kind == "rm" and s.role == "sum" and by_ids), policy_path)
        value = ScalarModel.value_from(init, tok)
        if cfg.lora.enabled:
            value.hf = apply_lora(cast(PreTrainedModel, value.hf), cfg.lora, head="score",
                                  new_token_ids=added_token_ids(init, tok))
        disable_dropout(value)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(value)
    if cfg.sharding == "fsdp":  # before the optimisers: fully_shard replaces the parameters
        for model in (policy, value, ref):
            if model is not None:
                shard(model)
    return Models(policy, tok, ref, value, reward)


class AdapterDisabled(nn.Module):
    """The reference policy of a LoRA run: the policy's forward with its adapter off (``torch.equal`` to
    the base model's), so policy and reference share one copy of the weights. Never trained."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]  # not a submodule: its parameters are the policy's
        self.module = policy  # what ``rl.policy_forward`` inspects for ``logits_to_keep``

    def forward(self, **kwargs: Any) -> Any:
        with torch.no_grad(), adapter_disabled(self._policy[0]):
            return self._policy[0](**kwargs)


def policy_optimizer(policy: nn.Module, value: ScalarModel | SharedValueModel | None, lr: float) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable weights, less a shared-backbone value adapter living inside it (the
    value optimiser's alone: held by both, it would be stepped twice, once with the policy's lr)."""
    shared = value.trainable_parameters() if isinstance(value, SharedValueModel) else []
    return make_optimizer(policy, lr, betas=(0.9, 0.999), exclude=shared)


def value_optimizer(value: ScalarModel | SharedValueModel, lr: float) -> torch.optim.Optimizer:
    """AdamW over what the value model trains: a shared-backbone value's adapter lives inside the policy."""
    if isinstance(value, SharedValueModel):
        return torch.optim.AdamW(value.trainable_parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return make_optimizer(value, lr, betas=(0.9, 0.999))


def train_ppo(cfg: PPOConfig, policy_path: str, ref_path: str, prompts_path: Path, out: Path, log_dir: Path,
              rm_path: str | None = None, ptx_corpus: Path | None = None, force: bool = False) -> dict:
    """Run RL from ``policy_path`` against the reward sources; writes the policy to ``out``.

    Each iteration: :func:`collect` (sample, score, advantages), :func:`train_epochs` (clipped updates),
    then the KL controller. The answers of each evaluation point go to ``out/curve-answers.jsonl`` for
    ``tiller.eval`` to judge: training sees reward sources only, never a gold judge."""
    sources = cfg.rewards or ([RewardSource(kind="rm", path=rm_path, name="rm", uncertainty=cfg.rm_uncertainty)]
                              if rm_path else [])
    if not sources:
        raise ConfigError("ppo needs a reward: pass --rm PATH or rewards=[...] in the config")
    inputs: dict[str, str | Path] = {"policy": policy_path, "ref": ref_path, "prompts": prompts_path,
                                     **{f"reward{i}": s.path for i, s in enumerate(sources) if s.kind == "rm"},
                                     **({"ptx": ptx_corpus} if ptx_corpus and cfg.ptx_coef else {})}
    fp = fingerprint(f"ppo-{cfg.algo}", cfg, inputs)
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    set_seed(cfg.seed)
    records = read_records(prompts_path, "prompt")
    prompts = [p.prompt for p in records if p.split == cfg.prompt_split]
    eval_set = [p.prompt for p in records if p.split == "valid"][: cfg.eval_prompts]
    if not prompts:
        raise ConfigError(f"{prompts_path}: no prompts in split {cfg.prompt_split!r}")
    if deepspeed_launch():
        raise ConfigError("ppo does not run under DeepSpeed (accelerate's DeepSpeed integration takes one trained "
                          "model, PPO trains a policy and a value model): launch with torchrun or "
                          "configs/accelerate/ddp.yaml, and sharding=fsdp to shard them (docs/scaling.md)")
    start_processes()  # FSDP2 shards while loading, before the accelerator exists
    if cfg.sharding == "fsdp" and distributed.world_size() == 1:
        raise ConfigError("sharding=fsdp shards over several processes: launch with torchrun --nproc_per_node N "
                          "or accelerate launch (docs/scaling.md)")
    m = load_models(cfg, policy_path, ref_path, sources)
    tok, ref, value_model, reward = m.tok, m.ref, m.value, m.reward
    blocks = None
    if cfg.ptx_coef:
        from tiller.stages.pretrain import pack, read_corpus

        if ptx_corpus is None:
            raise ConfigError("ptx_coef > 0 needs a pretraining corpus (--ptx-corpus)")
        blocks = pack(read_corpus(ptx_corpus), tok, cfg.ptx_block)
    acc = make_accelerator()
    check_world(cfg, distributed.world_size())
    sharded = cfg.sharding == "fsdp"
    opt = policy_optimizer(m.policy, m.value, cfg.lr)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    ema = EMA(m.policy, cfg.ema_decay) if cfg.ema_decay else None
    score_stats, baseline = RunningMoments(), MovingBaseline(cfg.baseline_decay)
    v_opt = value_optimizer(value_model, cfg.value_lr) if value_model is not None else None
    stateful = {"kl_ctl": kl_ctl, "score_stats": score_stats, "baseline": baseline, **({"ema": ema} if ema else {})}
    ckpt: Checkpointer | Checkpoint
    if sharded:  # FSDP2 models never go through accelerate (it would wrap them in DDP)
        policy = m.policy
        ckpt = Checkpoint(out.with_name(f".{out.name}.ckpt"), {"policy": policy, **({"value": value_model} if value_model
                          else {})}, {"policy": opt, **({"value": v_opt} if v_opt else {})}, stateful)
    else:
        if isinstance(value_model, ScalarModel):
            policy, opt, value_model, v_opt = acc.prepare(m.policy, opt, value_model, v_opt)
        else:  # none, or one sharing the policy's backbone (one process)
            policy, opt = acc.prepare(m.policy, opt)
        if not isinstance(ref, AdapterDisabled):
            ref.to(acc.device)
        for obj in stateful.values():
            acc.register_for_checkpointing(obj)
        ckpt = Checkpointer(out.with_name(f".{out.name}.ckpt"), acc)
    stale = ckpt.peek()
    if stale is not None and stale.get("fingerprint") != fp and not force:  # another config: no resume point
        print(f"note: {ckpt.folder} was written with another config or inputs; starting over", flush=True)
    if force or (stale is not None and stale.get("fingerprint") != fp):
        ckpt.clear()
    state = ckpt.load() or {"iteration": 0, "curve": [], "answers": []}
    tracker = Tracker(log_dir, f"ppo-{out.name}", cfg.report_to)
    n_seq = cfg.rollout_batch * cfg.group_size
    bar = progress(cfg.iterations, f"{cfg.algo} ({out.name})")
    bar.update(state["iteration"])
    start, totals = time.time(), {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    curve: list[dict] = state["curve"]
    answers: list[dict] = state["answers"]
    metrics: dict[str, float] = {}

    rollout_dir = out.with_name(f".{out.name}.rollout")  # the engine's model and pushed weights (sampler=vllm)
    servers = ExitStack()
    server = (servers.enter_context(rollout_server(cfg.vllm, acc.unwrap_model(policy), tok, rollout_dir,
                                                   f"after-{state['iteration']}")) if cfg.sampler == "vllm" else None)

    def evaluate_point(it: int, version: str) -> None:
        if not eval_set:
            return
        point, said = evaluation_point(acc.unwrap_model(policy), ref, tok, reward, eval_set, cfg, it, server, version)
        curve.append({**point, "episodes": it * n_seq})
        answers.append(said)
        tracker.log({f"eval/{k_}": v for k_, v in point.items() if k_ != "iteration"}, it)

    with servers:
        if state["iteration"] == 0 and not curve:
            evaluate_point(0, "after-0")
        for it in range(state["iteration"], cfg.iterations):
            beta = kl_ctl.value  # the coefficient this iteration's rewards use (logged before the controller moves)
            exp, info = collect(cfg, acc, policy, ref, value_model, tok, reward, prompts, it, beta, score_stats, baseline,
                                server)
            t2 = time.time()
            stats = train_epochs(cfg, acc, policy, opt, value_model, v_opt, exp, blocks, it, ema)
            kl_ctl.update(info["objective/kl"], n_seq)  # on the mean summed KL of this batch (lm-human-preferences)
            t3 = time.time()
            for name in ("generation", "scoring"):
                totals[name] += info[f"time/{name}"]
            totals["training"] += t3 - t2
            metrics = {**info, "objective/kl_coef": beta, "time/training": t3 - t2,
                       "charts/episodes_per_s": n_seq / (info["time/generation"] + info["time/scoring"] + t3 - t2),
                       **stats}
            tracker.log(metrics, it + 1)
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/score']:.2f}", kl=f"{metrics['objective/kl']:.2f}")
            if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                evaluate_point(it + 1, f"after-{it + 1}")
            if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
                ckpt.save({"iteration": it + 1, "curve": curve, "answers": answers, "fingerprint": fp})
        bar.close()
        final = acc.unwrap_model(policy)
        if ema:
            ema.copy_to(final)
        evaluate_point(cfg.iterations, f"after-{cfg.iterations}" + ("-ema" if ema else ""))
        if ema and curve and curve[-1]["iteration"] == cfg.iterations:  # the saved average, not the last weights
            curve[-1]["ema"] = answers[-1]["ema"] = True
    last_point = {f"eval/{k}": v for k, v in curve[-1].items()} if curve else {}
    result = {**metrics, **last_point}
    if cfg.iterations > state["iteration"]:
        result.update({"time/total": time.time() - start, **{f"time/{k_}_total": v for k_, v in totals.items()},
                       "episodes": cfg.iterations * n_seq})
    tracker.close()
    value_final = acc.unwrap_model(value_model) if value_model is not None else None
    # sharded weights are gathered to the main process (every rank takes part); whole ones are saved as they are
    policy_sd = full_state_dict(final) if sharded else None
    value_sd = full_state_dict(value_final) if sharded and value_final is not None else None
    value_sd = {k.removeprefix("hf."): v for k, v in value_sd.items()} if value_sd is not None else None
    if distributed.is_main():
        with atomic_dir(out) as tmp:
            if cfg.lora.enabled:  # the adapter alone (naming its base), or merged on request
                save_model(final, tmp, merge=cfg.lora.merge, base=policy_path)
            else:
                final.save_pretrained(tmp, state_dict=policy_sd)
            tok.save_pretrained(tmp)
            if isinstance(value_final, ScalarModel):  # a shared-backbone value lives in the policy's folder
                value_final.save_pretrained(tmp / "value", merge=cfg.lora.merge, state_dict=value_sd)
            (tmp / "curve.json").write_text(json.dumps(curve, indent=2))
            (tmp / ANSWERS_FILE).write_text("".join(json.dumps(a) + "\n" for a in answers))
            write_manifest(tmp, stage=f"ppo-{cfg.algo}", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=result,
                           inputs={k_: str(v) for k_, v in inputs.items()})
    ckpt.clear()  # every rank: it waits for the main process to have written
    return result


def sample_share(cfg: PPOConfig, policy, tok, prompts: list[Any], n: int, seed: tuple[int, ...], batch_size: int,
                 server: RolloutServer | None = None, version: str = ""):
    """This rank's block of ``prompts``, the index of its first prompt, and its ``n`` answers to each.

    The loop sampler and the rollout server give each answer its own seeded stream (:func:`answer_seeds`);
    Hugging Face generate has one stream, seeded per rank. With a rollout ``server``, ``policy``'s weights
    are pushed to it first under the name ``version`` (once: a name it already holds is not pushed again)."""
    lo, hi = distributed.shard_bounds(len(prompts))
    seeds = None
    if cfg.sampler in ("loop", "vllm"):
        seeds = answer_seeds(seed, lo * n, (hi - lo) * n)
    else:
        torch.manual_seed(hash((*seed, distributed.rank())) % 2**62)
    if server is not None:
        server.sync(policy, version)
    ro = generate(policy, tok, prompts[lo:hi], n=n, batch_size=batch_size, row_seeds=seeds, server=server,
                  **sampling(cfg))
    return prompts[lo:hi], lo, ro


def evaluation_point(policy, ref, tok, reward: CompositeReward, eval_set: list[Any], cfg: PPOConfig,
                     it: int, server: RolloutServer | None = None, version: str = ""
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    """The reward and KL of the policy's answers to the held-out prompts (a point of the RM/KL curve), and
    the answers themselves (``{"iteration", "prompts", "answers"}``) for an outside judge. Each
    data-parallel rank answers its block of the prompts; every rank returns the whole point."""
    sums = torch.zeros(2, dtype=torch.float64)  # summed KL, summed score
    # sharded models whole for the point: ranks answer different numbers of prompts, so their forwards must
    # not be collectives
    with gathered(policy), gathered(ref):
        mine, _, ro = sample_share(cfg, policy, tok, eval_set, 1, (cfg.seed, 7), cfg.rollout_batch, server, version)
        if ro.texts:
            b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id).to(next(policy.parameters()).device)
            lp, rlp, _ = score_tokens(policy, ref, None, b, cfg.temperature, ro.logprobs)
            total, _ = reward.score(mine, ro.texts, ro.ended, list(zip(ro.prompt_ids, ro.response_ids, strict=True)))
            sums = torch.tensor([float(((lp - rlp) * b.mask).sum()), float(total.sum())], dtype=torch.float64)
    kl, score = (distributed.all_sum(sums) / len(eval_set)).tolist()
    answers = [t for part in distributed.gather_objects(ro.texts) for t in part]
    return {"iteration": it, "kl": kl, "rm_score": score}, {"iteration": it, "prompts": list(eval_set), "answers": answers}


@dataclass
class Experience:
    """One scored rollout batch: what the update epochs train on. Per-token tensors are (N, R)."""

    batch: SequenceBatch
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def collect(cfg: PPOConfig, acc, policy, ref, value_model, tok, reward: CompositeReward, prompts: list[Any], it: int,
            beta: float, score_stats: RunningMoments, baseline: MovingBaseline, server: RolloutServer | None = None
            ) -> tuple[Experience, dict[str, float]]:
    """Sample a rollout batch, score exactly the sampled tokens, and compute advantages; returns the
    experience and this step's metrics (score, KL, lengths, times). Under data parallelism each rank
    samples and scores its block of the batch; the scores are gathered so that every statistic that mixes
    answers (baselines, groups, whitening, running moments, the KL controller's input) is the whole batch's."""
    t0 = time.time()
    k, n_seq = cfg.group_size, cfg.rollout_batch * cfg.group_size
    batch_prompts = random.Random(f"{cfg.seed}-{it}").choices(prompts, k=cfg.rollout_batch)  # same on resume
    # 1. rollout: this rank's prompts, k answers each (a group never straddles two ranks)
    with gathered(acc.unwrap_model(policy)) as whole:  # sharded: whole weights once, not an all-gather per token
        mine, lo, ro = sample_share(cfg, whole, tok, batch_prompts, k, (cfg.seed, it), n_seq, server, f"after-{it}")
    rows = slice(lo * k, lo * k + len(ro.texts))
    t1 = time.time()
    # 2. score the sampled tokens, then gather every rank's scores
    raw_mine, parts = reward.score([p for p in mine for _ in range(k)], ro.texts, ro.ended,
                                   list(zip(ro.prompt_ids, ro.response_ids, strict=True)))
    raw_scores = distributed.gather_cat(raw_mine)
    ended = distributed.gather_cat(torch.tensor(ro.ended))
    scores = shaped_scores(cfg, raw_scores, ended, score_stats)
    b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id).to(acc.device)
    # under mixed precision the old logprobs come from a forward in the training precision, not from the
    # sampler's fp32 logits, so the first minibatch's ratio is 1; the reference runs the same way (KL 0 at start)
    sampled = ro.logprobs if cfg.mixed_precision == "no" else None
    with autocast(cfg.mixed_precision, acc.device):
        old_lp, ref_lp, old_values = score_tokens(policy, ref, value_model, b, cfg.temperature, sampled)
    # 3-4. KL-penalised rewards and advantages of this rank's rows
    advantages, returns, kl = advantages_and_returns(cfg, scores.to(acc.device), old_lp, ref_lp, old_values, b.mask,
                                                     beta, baseline, rows)
    sums = distributed.all_sum(torch.stack([kl.sum(), b.mask.sum(), *(v.sum() for v in parts.values())]).double())
    mean_kl, length = float(sums[0]) / n_seq, float(sums[1]) / n_seq
    info = {"objective/kl": mean_kl, "objective/score": float(raw_scores.mean()),
            "objective/score_std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
            "objective/non_score_reward": -beta * mean_kl,
            "policy/ended_fraction": float(ended.float().mean()),
            "policy/response_length": length,
            "time/generation": t1 - t0, "time/scoring": time.time() - t1,
            **({f"objective/score_{n}": float(v) / n_seq for n, v in zip(parts, sums[2:], strict=True)}
               if len(parts) > 1 else {})}
    return Experience(b, old_lp, old_values, advantages, returns), info


def gather_experience(exp: Experience) -> Experience:
    """Every data-parallel rank's experience, concatenated in rank order (the rollout's own order): prompts
    left-padded and responses right-padded to the widest rank's, the layout one process builds. Identity
    in one process."""
    if not distributed.active():
        return exp
    b = exp.batch
    widths = distributed.gather_objects((b.prompt_width, b.response_ids.shape[1]))
    p_max, r_max = max(w[0] for w in widths), max(w[1] for w in widths)
    left, right = p_max - b.prompt_width, r_max - b.response_ids.shape[1]

    def ids(x: torch.Tensor) -> torch.Tensor:  # (n, P+R) -> (n, P_max+R_max); padding is masked out
        return torch.nn.functional.pad(x, (left, right))

    def tokens(x: torch.Tensor) -> torch.Tensor:  # (n, R) -> (n, R_max)
        return torch.nn.functional.pad(x, (0, right))

    whole = SequenceBatch(distributed.gather_cat(ids(b.input_ids)), distributed.gather_cat(ids(b.attention_mask)),
                          distributed.gather_cat(tokens(b.response_ids)), distributed.gather_cat(tokens(b.mask)),
                          p_max)
    return Experience(whole, *(distributed.gather_cat(tokens(t)) for t in (
        exp.old_logprobs, exp.old_values, exp.advantages, exp.returns)))


def train_epochs(cfg: PPOConfig, acc, policy, opt, value_model, v_opt, exp: Experience, blocks, it: int,
                 ema: EMA | None = None) -> dict[str, float]:
    """``ppo_epochs`` passes of clipped policy (+ value, + ptx) updates over shuffled minibatches.

    A minibatch's losses are token means over the whole minibatch whatever ``grad_accum``: each
    micro-batch's token mean is weighed by its share of the minibatch's tokens, and the minibatch's ptx
    batch is drawn once and split, so ``grad_accum`` changes memory, not the update. The EMA, if any, is
    updated after every optimiser step. Under data parallelism the ranks first gather the whole rollout's
    experience (:func:`gather_experience`: token ids and per-token tensors, small beside the models), so the
    minibatches are drawn as one process draws them; each rank then runs its block of every minibatch and of
    every ptx batch, its tokens weighed by their share of the whole minibatch's, so DDP's average of the
    ranks' gradients is the one-process gradient."""
    exp = gather_experience(exp)
    b = exp.batch
    n = len(b.input_ids)  # the whole rollout's sequences
    world = distributed.world_size()
    lo, hi = distributed.shard_bounds(cfg.minibatch_size)  # this rank's block of each minibatch
    micro = (hi - lo) // cfg.grad_accum
    g = torch.Generator().manual_seed(cfg.seed * 7919 + it)
    sums: dict[str, float] = {}
    step = 0
    policy.train()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, cfg.minibatch_size):
            minibatch = order[start : start + cfg.minibatch_size].to(acc.device)
            n_tokens = b.mask[minibatch].sum().clamp_min(1.0)  # the whole minibatch's
            chosen = minibatch[lo:hi]
            ptx = None
            if blocks is not None:
                p_lo, p_hi = distributed.shard_bounds(cfg.ptx_batch_size)
                ptx = ptx_batch(blocks, cfg, it, step)[p_lo:p_hi].to(acc.device)
            for mi in range(cfg.grad_accum):
                idx = chosen[mi * micro : (mi + 1) * micro]
                mb = b.select(idx)
                share = distributed.global_share(mb.mask.sum(), n_tokens)
                with autocast(cfg.mixed_precision, acc.device):  # bf16 forwards; the weights stay fp32
                    lp, logits = policy_forward(policy, mb, cfg.temperature)
                pg_loss, st = ppo_policy_loss(lp, exp.old_logprobs[idx], exp.advantages[idx], mb.mask, cfg.cliprange)
                loss = pg_loss * share
                entropy = entropy_from_logits(logits.detach() / cfg.temperature)
                row = {"loss/policy": pg_loss.item(), "policy/clipfrac": float(st["clipfrac"]),
                       "policy/approx_kl": float(st["approx_kl"]), "policy/ratio": float(st["ratio"]),
                       "policy/entropy": float(masked_mean(entropy, mb.mask))}
                if ptx is not None:
                    part = ptx.shape[0] // cfg.grad_accum
                    x = ptx[mi * part : (mi + 1) * part]  # full blocks: equal token counts, equal weights
                    with autocast(cfg.mixed_precision, acc.device):
                        lm = masked_lm_loss(policy(input_ids=x).logits, x)
                    loss = loss + cfg.ptx_coef * lm / cfg.grad_accum
                    row["loss/ptx"] = lm.item()
                acc.backward(loss)
                if value_model is not None:
                    with autocast(cfg.mixed_precision, acc.device):
                        v = value_forward(value_model, mb)
                    vf_loss, vst = ppo_value_loss(v, exp.old_values[idx], exp.returns[idx], mb.mask,
                                                  cfg.cliprange_value)
                    acc.backward(vf_loss * share)
                    row.update({"loss/value": vf_loss.item(), "val/clipfrac": float(vst["clipfrac"]),
                                "val/error": float(vst["error"])})
                # the step's metrics are its minibatch's token means (ptx: block means), whatever the
                # split over micro-batches and ranks
                tokens_w = float(mb.mask.sum() / n_tokens)
                for key, val in row.items():
                    w = 1.0 / (cfg.grad_accum * world) if key == "loss/ptx" else tokens_w
                    sums[key] = sums.get(key, 0.0) + val * w
            clip_grad_norm_(policy, 1.0)  # DDP: grads already averaged; FSDP2: the norm over all shards
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(acc.unwrap_model(policy))
            if value_model is not None:
                clip_grad_norm_(value_model, 1.0)
                v_opt.step()
                v_opt.zero_grad(set_to_none=True)
            step += 1
    keys = sorted(sums)
    means = distributed.all_sum(torch.tensor([sums[k_] for k_ in keys], dtype=torch.float64)) / max(step, 1)
    return dict(zip(keys, means.tolist(), strict=True))
