"""Stage 3, offline: Direct Preference Optimization from the rankings the RM reads (Rafailov et al. 2023, issue #14).

No reward model and no sampling: the policy is trained so that its implicit reward beta * (log pi - log pi_ref)
ranks the labelled answers as the labelers did. The reference is the SFT model, frozen (with LoRA, the policy
with its adapter off, as in PPO). Rankings are read as ``tiller rm`` reads them: one item per set of answers,
however many labelers ranked it, every answer through the model once; ties form no pair. ``mode: pairs`` is
DPO on every labelled pair with the labelers' shares as targets (``losses.dpo_loss``, the RM's convention);
``plackett_luce`` is DPO's list loss over each ranking (``losses.plackett_luce_loss``). Held-out prompts are
split as the RM splits them; a killed run resumes from its last checkpoint to the same weights.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tiller import distributed
from tiller.adapters import LORA_HELP, LoraConfig, apply_lora, save_model
from tiller.batching import join
from tiller.chat import encode_prompt, encode_response
from tiller.config import ConfigError, field
from tiller.data import Ranking, read_records
from tiller.losses import dpo_loss, pair_preferences, plackett_luce_loss, ranks_from_groups
from tiller.models import added_token_ids, enable_gradient_checkpointing, load_policy
from tiller.rl import build_sequences, disable_dropout, policy_forward
from tiller.runs import atomic_dir, clean_other_fingerprints, done_metrics, fingerprint, write_manifest
from tiller.stages.ppo import AdapterDisabled
from tiller.stages.reward import answer_set, split_by_prompt
from tiller.tracking import Tracker
from tiller.training import (
    CHECKPOINTING_HELP,
    PRECISION_HELP,
    Checkpointer,
    Precision,
    autocast,
    cosine_schedule,
    deepspeed_launch,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    progress,
    set_seed,
)

STATS = ("loss", "accuracy", "chosen", "rejected", "margin")


@dataclass
class DPOConfig:
    beta: float = field(0.1, help="KL strength: the implicit reward is beta * (log pi - log pi_ref) (Rafailov et al.)")
    mode: Literal["pairs", "plackett_luce"] = field(
        "pairs", help="pairs: DPO on every labelled pair of a ranking, the labelers' shares as targets, / C(K,2) "
                      "as the RM; plackett_luce: the list loss over each ranking (ties unordered within a group)")
    label_smoothing: float = field(0.0, help="cDPO: labels taken as flipped with this probability (pairs mode)")
    epochs: int = field(1, help="passes over the rankings")
    lr: float = field(1e-5, help="peak learning rate (cosine schedule with warmup)")
    batch_size: int = field(16, help="items per step (an item: one prompt's K answers and all its rankings)")
    max_len: int = field(160, help="prompt+answer tokens per answer; the prompt's start is cut first")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    valid_fraction: float = field(0.1, help="share of PROMPTS held out (all labelers' rankings of one prompt together)")
    checkpoint_every: int = field(50, help="steps between resumable checkpoints (0: none)")
    allow_empty: bool = field(False, help="accept empty answers (model samples)")
    mixed_precision: Precision = field("no", help=PRECISION_HELP)
    gradient_checkpointing: bool = field(False, help=CHECKPOINTING_HELP)
    lora: LoraConfig = field(default_factory=LoraConfig, help=LORA_HELP + "; the reference is then the policy with "
                                                                           "its adapter disabled (no second copy)")
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError("beta must be > 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError("label_smoothing must be in [0, 0.5)")
        if self.label_smoothing and self.mode != "pairs":
            raise ConfigError("label_smoothing is cDPO's, for mode=pairs")
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError("valid_fraction must be in [0, 1)")
        if self.max_len < 2:
            raise ConfigError("max_len must be >= 2 (a prompt token and an answer token)")


@dataclass
class DPOItem:
    """One set of K answers to a prompt and every ranking of it (groups, best first), and their tokens."""

    prompt: Any
    responses: list[str]
    rankings: list[list[list[int]]]

    @property
    def k(self) -> int:
        return len(self.responses)


def to_dpo_items(records: list[Ranking]) -> list[DPOItem]:
    """Rankings of the same prompt and answers become one item (``reward.answer_set``), in first-seen order."""
    groups: dict[Any, DPOItem] = {}
    for r in records:
        item = groups.setdefault(answer_set(r), DPOItem(r.prompt, list(r.responses), []))
        item.rankings.append(r.ranking)
    return list(groups.values())


def encode_items(tok, items: list[DPOItem], max_len: int) -> list[list[tuple[list[int], list[int]]]]:
    """(prompt ids, answer ids) of every answer of every item, cut to ``max_len`` as every stage cuts
    (``batching.join``) but always keeping one prompt token, whose logits predict the answer's first token."""
    out = []
    for item in items:
        p = encode_prompt(tok, item.prompt)
        rows = []
        for resp in item.responses:
            ids, n_prompt = join(p, encode_response(tok, resp)[: max_len - 1], max_len)
            rows.append((ids[:n_prompt], ids[n_prompt:]))
        out.append(rows)
    return out


def sequence_logprobs(model, seqs: list[tuple[list[int], list[int]]], pad_id: int, device) -> torch.Tensor:
    """Summed log-probability of each answer given its prompt: (N,). An empty answer has log-prob 0."""
    b = build_sequences([s[0] for s in seqs], [s[1] for s in seqs], pad_id).to(device)
    lp, _ = policy_forward(model, b, 1.0)
    return (lp * b.mask).sum(1)


def batch_loss(cfg: DPOConfig, policy, ref, items: list[DPOItem], seqs, pad_id: int, device
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a batch of items, as a mean over its rankings (each ranking one element), and its stats.

    Each answer goes through the policy once and through the reference once (under no_grad)."""
    flat = [s for item_seqs in seqs for s in item_seqs]
    with autocast(cfg.mixed_precision, device):
        logps = sequence_logprobs(policy, flat, pad_id, device)
        with torch.no_grad():
            ref_logps = sequence_logprobs(ref, flat, pad_id, device)
    k_max = max(item.k for item in items)
    pol = torch.zeros(len(items), k_max, device=device)
    refs = torch.zeros(len(items), k_max, device=device)
    valid = torch.zeros(len(items), k_max, dtype=torch.bool, device=device)
    i = 0
    for row, item in enumerate(items):  # (B, K_max)
        pol[row, : item.k], refs[row, : item.k], valid[row, : item.k] = logps[i : i + item.k], ref_logps[i : i + item.k], True
        i += item.k
    n_labels = torch.tensor([float(len(item.rankings)) for item in items], device=device)
    if cfg.mode == "pairs":
        prefs = torch.zeros(len(items), k_max, k_max, device=device)
        for row, item in enumerate(items):
            prefs[row, : item.k, : item.k] = torch.tensor(pair_preferences(item.rankings, item.k))
        return dpo_loss(pol, refs, prefs, valid, cfg.beta, n_labels, cfg.label_smoothing)
    # plackett_luce: one row per ranking, on the rewards of its item (the answers' forwards are shared)
    owner = torch.tensor([row for row, item in enumerate(items) for _ in item.rankings], device=device)
    ranks = torch.full((len(owner), k_max), k_max, dtype=torch.long, device=device)
    n = 0
    for item in items:
        for groups in item.rankings:
            ranks[n, : item.k] = torch.tensor(ranks_from_groups(groups, item.k))
            n += 1
    return plackett_luce_loss(pol[owner], refs[owner], ranks, valid[owner], cfg.beta)


def weight(items: list[DPOItem]) -> float:
    """What a batch's loss is a mean over: its rankings of two answers or more."""
    return float(sum(len(item.rankings) for item in items if item.k >= 2))


@torch.no_grad()
def evaluate(cfg: DPOConfig, policy, ref, tok, items: list[DPOItem], seqs, device) -> dict[str, float]:
    """Loss, implicit-reward accuracy, chosen and rejected rewards and margin over ``items``, pair-weighted as
    in training; each rank evaluates its share of items and the sums are combined."""
    sums = torch.zeros(6, dtype=torch.float64)  # loss * rankings, 4 stats * pairs, pairs
    mine = distributed.my_share(list(range(len(items))))
    for i in range(0, len(mine), cfg.batch_size):
        idx = mine[i : i + cfg.batch_size]
        loss, st = batch_loss(cfg, policy, ref, [items[j] for j in idx], [seqs[j] for j in idx], tok.pad_token_id,
                              device)
        pairs = float(st["n_pairs"])
        sums += torch.tensor([float(loss) * weight([items[j] for j in idx]),
                              *(float(st[k]) * pairs for k in STATS[1:]), pairs], dtype=torch.float64)
    total = distributed.all_sum(sums).tolist()
    return {"loss": total[0] / max(weight(items), 1e-9),
            **{k: v / max(total[5], 1e-9) for k, v in zip(STATS[1:], total[1:5], strict=True)}}


def load_models(cfg: DPOConfig, policy_path: str, ref_path: str) -> tuple[Any, Any, Any]:
    """The trained policy (fp32, no dropout: the implicit reward is a function of the weights, not of a dropout
    draw), its tokenizer and the frozen reference, in the policy's dtype (its log-probs enter the loss)."""
    policy: Any
    policy, tok = load_policy(policy_path, trainable=True)
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora, new_token_ids=added_token_ids(policy_path, tok))
    ref: Any
    if cfg.lora.enabled and str(ref_path) == str(policy_path):
        ref = AdapterDisabled(policy)  # the base under the adapter is the reference: no second copy
    else:
        ref, _ = load_policy(ref_path, dtype=next(policy.parameters()).dtype, trainable=False)
    disable_dropout(policy)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy, tok, ref


def dpo(cfg: DPOConfig, policy_path: str, ref_path: str, rankings: list[Path], out: Path, log_dir: Path,
        force: bool = False) -> dict:
    """Train ``policy_path`` by DPO against ``ref_path`` on ranking files; writes a policy folder to ``out``."""
    inputs: dict[str, str | Path] = {"policy": policy_path, "ref": ref_path,
                                     **{f"rankings{i}": p for i, p in enumerate(rankings)}}
    fp = fingerprint("dpo", cfg, inputs)
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    if deepspeed_launch():
        raise ConfigError("dpo does not run under DeepSpeed (the frozen reference would need its own engine); "
                          "launch with torchrun or configs/accelerate/ddp.yaml")
    set_seed(cfg.seed)
    records = [r for p in rankings for r in read_records(p, "ranking", allow_empty=cfg.allow_empty)]
    if not records:
        raise ConfigError(f"no rankings in {', '.join(map(str, rankings))}")
    train_records, valid_records = split_by_prompt(records, cfg.valid_fraction, cfg.seed)
    train, valid = to_dpo_items(train_records), to_dpo_items(valid_records)
    if not train:
        raise ConfigError(f"no rankings left to train on after holding out valid_fraction={cfg.valid_fraction}")
    policy, tok, ref = load_models(cfg, policy_path, ref_path)
    train_seqs, valid_seqs = encode_items(tok, train, cfg.max_len), encode_items(tok, valid, cfg.max_len)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    acc = make_accelerator()
    opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    sched = cosine_schedule(opt, total, warmup_ratio=0.05)
    policy, opt, sched = acc.prepare(policy, opt, sched)
    if not isinstance(ref, AdapterDisabled):
        ref.to(acc.device)
    # tied to the fingerprint: a changed config or input never resumes a stale checkpoint
    clean_other_fingerprints(out, ("ckpt",), fp)
    ckpt = Checkpointer(out.with_name(f".{out.name}.ckpt-{fp}"), acc)
    if force:
        ckpt.clear()
    state = ckpt.load() or {"step": 0, "history": []}
    history: list[dict] = state["history"]
    tracker = Tracker(log_dir, f"dpo-{out.name}", cfg.report_to)
    bar = progress(total, f"dpo {cfg.mode} ({len(train_records)} rankings of {len(train)} answer sets)")
    bar.update(state["step"])
    start, step = time.time(), state["step"]
    policy.train()
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        order = list(range(len(train)))
        random.Random(f"{cfg.seed}-{epoch}").shuffle(order)  # the same order on resume
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        # 1. this rank's block of the batch; its loss is its part of the global mean over rankings
        mine = distributed.my_share(idx)
        rows = mine or idx[:1]  # a rank short of items joins with weight 0
        local, st = batch_loss(cfg, policy, ref, [train[j] for j in rows], [train_seqs[j] for j in rows],
                               tok.pad_token_id, acc.device)
        part, whole = weight([train[j] for j in mine]), weight([train[j] for j in idx])
        # 2. backward (DDP averages the ranks' gradients), clip, step
        optimizer_step(acc, policy, local * distributed.global_share(part, max(whole, 1e-9)), opt, sched)
        # 3. the global batch's loss and pair-weighted implicit-reward statistics, for the logs
        pairs = st["n_pairs"] * float(bool(mine))
        sums = distributed.all_sum(torch.stack([local.detach() * part, *(st[k] * pairs for k in STATS[1:]),
                                                pairs]).double()).tolist()
        row = {"loss/train": sums[0] / max(whole, 1e-9),
               **{f"train/{k}": v / max(sums[5], 1e-9) for k, v in zip(STATS[1:], sums[1:5], strict=True)}}
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss/train']:.3f}", acc=f"{row['train/accuracy']:.2f}")
        tracker.log({**row, "charts/lr": sched.get_last_lr()[0]}, step)
        if step % steps_per_epoch == 0 or step == total:  # 4. held-out prompts, once an epoch
            metrics = {"epoch": math.ceil(step / steps_per_epoch), **row}
            if valid:
                ev = evaluate(cfg, acc.unwrap_model(policy), ref, tok, valid, valid_seqs, acc.device)
                metrics.update({f"eval/{k}": v for k, v in ev.items()})
            tracker.log(metrics, step)
            history.append(metrics)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            ckpt.save({"step": step, "history": history})
    bar.close()
    tracker.close()
    result = {**(history[-1] if history else {}), "seconds": time.time() - start, "train/rankings": len(train_records),
              "train/items": len(train), "eval/rankings": len(valid_records)}
    if distributed.is_main():
        with atomic_dir(out) as tmp:
            save_model(acc.unwrap_model(policy), tmp, merge=cfg.lora.merge, base=policy_path)
            tok.save_pretrained(tmp)
            write_manifest(tmp, stage="dpo", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=result,
                           history=history, inputs={k: str(v) for k, v in inputs.items()})
    ckpt.clear()  # every rank: it waits for the main process to have written
    return result
