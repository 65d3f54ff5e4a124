"""Stage 1: supervised fine-tuning on demonstrations (InstructGPT section 3.5).

The loss falls on response tokens only (prompt and padding are masked to -100). With ``select_by_rm``
the checkpoint kept is the one whose greedy answers to validation prompts score highest under a reward
model, as InstructGPT did ("we select our final SFT model based on the RM score on the validation set").
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiller import distributed
from tiller.adapters import LORA_HELP, LoraConfig, apply_lora, save_model
from tiller.batching import IGNORE, pack_examples, pad, sft_example
from tiller.chat import encode_prompt, encode_response
from tiller.config import ConfigError, field
from tiller.data import Demonstration, read_records
from tiller.losses import masked_lm_loss
from tiller.models import added_token_ids, enable_gradient_checkpointing, load_policy
from tiller.runs import atomic_dir, done_metrics, fingerprint, write_manifest
from tiller.tracking import Tracker
from tiller.training import (
    CHECKPOINTING_HELP,
    PRECISION_HELP,
    Precision,
    autocast,
    cosine_schedule,
    gather_weights,
    gathered,
    loading_whole,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    progress,
    set_seed,
    snapshot_weights,
    zero_stage,
)


@dataclass
class SFTConfig:
    epochs: int = field(4, help="passes over the demonstrations (InstructGPT: 16, selecting by RM score)")
    lr: float = field(1e-3, help="peak learning rate (cosine schedule with warmup)")
    batch_size: int = field(32, help="sequences (or packed rows) per optimiser step")
    max_len: int = field(160, help="longest prompt+response in tokens; the prompt's start is cut first")
    packing: bool = field(False, help="pack several demonstrations into one row of max_len tokens")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    valid_fraction: float = field(0.1, help="share of demonstrations held out for eval loss")
    select_by_rm: str = field("", help="reward model folder: keep the epoch whose validation answers it scores best")
    rm_eval_prompts: int = field(64, help="validation prompts answered (greedy) for RM selection")
    allow_empty: bool = field(False, help="accept demonstrations with an empty response")
    mixed_precision: Precision = field("no", help=PRECISION_HELP)
    gradient_checkpointing: bool = field(False, help=CHECKPOINTING_HELP)
    lora: LoraConfig = field(default_factory=LoraConfig, help=LORA_HELP)
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError("valid_fraction must be in [0, 1)")
        if self.select_by_rm and self.valid_fraction == 0:
            raise ConfigError("select_by_rm needs validation prompts: set valid_fraction > 0")


def encode_demos(tok, demos: list[Demonstration], max_len: int) -> list[tuple[list[int], list[int]]]:
    return [sft_example(encode_prompt(tok, d.prompt), encode_response(tok, d.response), max_len) for d in demos]


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids = pad([r[0] for r in rows], pad_id)
    return {"input_ids": ids, "labels": pad([r[1] for r in rows], IGNORE),
            "attention_mask": pad([[1] * len(r[0]) for r in rows], 0)}


def target_tokens(row: tuple[list[int], list[int]]) -> int:
    """The tokens a row's loss falls on (what :func:`masked_lm_loss` averages over)."""
    return sum(1 for t in row[1][1:] if t != IGNORE)


@torch.no_grad()
def eval_loss(model, rows, pad_id: int, batch_size: int) -> float:
    """Token-mean loss over ``rows``; each rank evaluates its share and the sums are combined. A rank short
    of rows runs as many forwards as the others, on copies without targets (ZeRO-3 gathers in every one)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)  # summed loss, tokens
    mine, real = distributed.padded_share(rows)
    mine = mine[:real] + [(ids, [IGNORE] * len(ids)) for ids, _ in mine[real:]]
    for i in range(0, len(mine), batch_size):
        b = {k: v.to(model.device) for k, v in collate(mine[i : i + batch_size], pad_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total += torch.tensor([masked_lm_loss(logits, b["labels"], reduction="sum").item(),
                               float((b["labels"][:, 1:] != IGNORE).sum())], dtype=torch.float64)
    model.train()
    loss, count = distributed.all_sum(total).tolist()
    return loss / max(count, 1)


def rm_selection_score(model, tok, rm_path: str, prompts: list) -> float:
    """Mean RM score of greedy answers to validation prompts (InstructGPT's SFT model selection); each rank
    answers its share with the whole ``model`` (``training.gathered``: answers end after different numbers
    of forwards)."""
    from tiller.rollout import generate
    from tiller.scoring import RewardScorer

    mine = distributed.my_share(prompts)
    ro = generate(model, tok, mine, temperature=0.0)
    total = 0.0
    if mine:
        with loading_whole():  # a scoring model no engine prepares: whole on every rank, also under ZeRO-3
            scorer = RewardScorer(rm_path)
        total = float(sum(scorer.score(mine, ro.texts, ro.ended)))
    return float(distributed.all_sum(torch.tensor([total], dtype=torch.float64))) / max(len(prompts), 1)


def sft(cfg: SFTConfig, model_path: str, demos_path: Path, out: Path, log_dir: Path, force: bool = False) -> dict:
    """Fine-tune ``model_path`` on demonstrations; writes ``out`` (a save_pretrained folder)."""
    inputs: dict[str, str | Path] = {"model": model_path, "demos": demos_path,
                                     **({"rm": cfg.select_by_rm} if cfg.select_by_rm else {})}
    fp = fingerprint("sft", cfg, inputs)
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    set_seed(cfg.seed)
    demos = read_records(demos_path, "demonstration", allow_empty=cfg.allow_empty)
    random.Random(cfg.seed).shuffle(demos)
    n_valid = int(len(demos) * cfg.valid_fraction)
    valid, train = demos[:n_valid], demos[n_valid:]
    if not train:
        raise ConfigError(f"{demos_path}: no demonstrations left to train on")
    model: Any
    model, tok = load_policy(model_path)
    if cfg.lora.enabled:  # new chat-marker rows train with the adapter
        model = apply_lora(model, cfg.lora, new_token_ids=added_token_ids(model_path, tok))
    train_rows = encode_demos(tok, train, cfg.max_len)
    valid_rows = encode_demos(tok, valid, cfg.max_len)
    if cfg.packing:
        train_rows = pack_examples(train_rows, cfg.max_len, tok.pad_token_id)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    acc = make_accelerator()
    if cfg.lora.enabled and zero_stage(acc) == 3:
        raise ConfigError("lora is not supported under DeepSpeed ZeRO-3 (its adapter folder is written from whole "
                          "weights); use configs/accelerate/deepspeed-zero2.yaml")
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = cosine_schedule(opt, steps_per_epoch * cfg.epochs, warmup_ratio=0.03)
    model, opt, sched = acc.prepare(model, opt, sched)
    tracker = Tracker(log_dir, "sft", cfg.report_to)
    rng = random.Random(cfg.seed)
    best: tuple[float, dict | None, dict] | None = None
    history = []
    step, start = 0, time.time()
    bar = progress(steps_per_epoch * cfg.epochs, "sft")
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(train_rows)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            rows = [train_rows[j] for j in order[i : i + cfg.batch_size]]
            # 1. this rank's block of the global batch; its loss is its part of the global token mean
            tokens = max(sum(target_tokens(r) for r in rows), 1)
            mine = distributed.my_share(rows)
            b = {k: v.to(acc.device) for k, v in collate(mine or rows[:1], tok.pad_token_id).items()}
            with autocast(cfg.mixed_precision, acc.device):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            summed = masked_lm_loss(logits, b["labels"], reduction="sum") * float(bool(mine))  # a rank short of rows joins with 0
            # 2. backward (DDP averages the ranks' gradients), clip, step
            optimizer_step(acc, model, distributed.global_share(summed, tokens), opt, sched)
            loss = distributed.all_sum(summed.detach()) / tokens
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                tracker.log({"loss/train": loss.item(), "charts/lr": sched.get_last_lr()[0]}, step)
        metrics = {"epoch": epoch + 1, "loss/train": loss.item()}
        if valid_rows:
            metrics["loss/eval"] = eval_loss(acc.unwrap_model(model), valid_rows, tok.pad_token_id, cfg.batch_size)
        if cfg.select_by_rm and valid:
            with gathered(acc, model) as whole:
                metrics["eval/rm_score"] = rm_selection_score(whole, tok, cfg.select_by_rm,
                                                              [d.prompt for d in valid[: cfg.rm_eval_prompts]])
        tracker.log(metrics, step)
        history.append(metrics)
        if cfg.select_by_rm and (best is None or metrics["eval/rm_score"] > best[0]):
            best = (metrics["eval/rm_score"], snapshot_weights(acc, model), metrics)  # a copy on the main process
    bar.close()
    tracker.close()
    unwrapped = acc.unwrap_model(model)
    # InstructGPT: the epoch whose answers the RM scores best; under ZeRO-3 the last one's weights gathered
    weights = best[1] if best is not None else gather_weights(acc, model)  # None but on the main process
    result = {**(best[2] if best is not None else history[-1]), "seconds": time.time() - start, "n_train": len(train), "n_valid": len(valid)}
    if distributed.is_main():
        with atomic_dir(out) as tmp:
            if zero_stage(acc) == 3:  # no rank holds the whole model (and LoRA was refused)
                unwrapped.save_pretrained(tmp, state_dict=weights)
            else:
                if weights is not None:
                    unwrapped.load_state_dict(weights)
                save_model(unwrapped, tmp, merge=cfg.lora.merge, base=model_path)  # plain, adapter alone, or merged
            tok.save_pretrained(tmp)
            write_manifest(tmp, stage="sft", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=result,
                           history=history, inputs={k: str(v) for k, v in inputs.items()})
        (log_dir / "sft-history.json").write_text(json.dumps(history, indent=2))
    distributed.barrier()
    return result
