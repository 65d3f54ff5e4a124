"""Stage 2: a reward model from K-wise rankings (InstructGPT section 3.5, eq. 1).

All K responses of one ranking go through the model as one batch element, so each response costs one
forward pass and all C(K,2) comparisons of a prompt share a gradient step (InstructGPT: shuffling pairs
as separate data points overfits and costs K-1 forwards per response). After training a bias is set so
demonstrations score mean 0, and optionally a gain so that the responses in the rankings (policy
samples) have standard deviation 1; both are stored with the checkpoint and applied whenever it scores.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import torch

from tiller.batching import encode_prompt, encode_response, join
from tiller.chat import prompt_key
from tiller.config import ConfigError, field
from tiller.data import Ranking, read_records
from tiller.data.agreement import pairwise_agreement
from tiller.losses import ranking_loss, ranks_from_groups
from tiller.models import ScalarModel, load_tokenizer
from tiller.runs import atomic_dir, fingerprint, is_done, read_manifest, write_manifest
from tiller.scoring import RewardScorer, score_sorted
from tiller.tracking import Tracker
from tiller.training import (
    cosine_schedule,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    progress,
    set_seed,
)


@dataclass
class RMConfig:
    epochs: int = field(1, help="passes over the rankings (InstructGPT: 1; more overfits)")
    lr: float = field(3e-4, help="peak learning rate (cosine schedule)")
    batch_size: int = field(16, help="ranking records per step (each holds K responses)")
    max_len: int = field(160, help="prompt+response tokens per response")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    valid_fraction: float = field(0.15, help="share of PROMPTS held out (all labelers' rankings of one prompt together)")
    label_source: str = field("ranking", help="'ranking', or 'flags:F1,F2' to rank unflagged above flagged answers (a rule RM)")
    normalize_std: bool = field(False, help="also set a gain so ranked responses score with std 1")
    allow_empty: bool = field(False, help="accept empty responses (model samples, HH-RLHF's empty replies)")
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if self.label_source != "ranking" and not self.label_source.startswith("flags:"):
            raise ConfigError("label_source must be 'ranking' or 'flags:F1,F2,...'")


def relabel_by_flags(records: list[Ranking], flags: set[str]) -> list[Ranking]:
    """Sparrow-style rule labels: answers carrying any of ``flags`` rank below the others (ties within)."""
    out = []
    for r in records:
        if not r.flags:
            continue
        bad = [i for i, f in enumerate(r.flags) if flags & set(f)]
        good = [i for i in range(len(r.responses)) if i not in bad]
        if bad and good:
            out.append(Ranking(r.prompt, r.responses, [good, bad], r.labeler, r.likert, r.flags, r.id))
    return out


def split_by_prompt(records: list[Ranking], fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    keys = sorted({prompt_key(r.prompt) for r in records})
    random.Random(seed).shuffle(keys)
    held = set(keys[: int(round(len(keys) * fraction))])
    return [r for r in records if prompt_key(r.prompt) not in held], [r for r in records if prompt_key(r.prompt) in held]


def encode_records(tok, records: list[Ranking], max_len: int) -> list[list[list[int]]]:
    """Token ids of every response of every record, prompt encoded once per record."""
    out = []
    for r in records:
        p = encode_prompt(tok, r.prompt)
        out.append([join(p, encode_response(tok, resp), max_len)[0] for resp in r.responses])
    return out


def forward_records(model: ScalarModel, seqs: list[list[list[int]]], records: list[Ranking], pad_id: int, device):
    """Scores (B, K_max), ranks (B, K_max), valid (B, K_max) for a batch of ranking records."""
    k_max = max(len(s) for s in seqs)
    raw = score_sorted(model, [x for s in seqs for x in s], pad_id, device)
    scores = torch.zeros(len(seqs), k_max, device=device)
    ranks = torch.zeros(len(seqs), k_max, dtype=torch.long, device=device)
    valid = torch.zeros(len(seqs), k_max, dtype=torch.bool, device=device)
    i = 0
    for row, (s, r) in enumerate(zip(seqs, records, strict=True)):
        k = len(s)
        scores[row, :k] = raw[i : i + k]
        ranks[row, :k] = torch.tensor(ranks_from_groups(r.ranking, k), device=device)
        valid[row, :k] = True
        i += k
    return scores, ranks, valid


@torch.no_grad()
def evaluate(model: ScalarModel, tok, records: list[Ranking], max_len: int, batch_size: int) -> dict:
    """Held-out pairwise accuracy and loss against the labels, plus a calibration table."""
    model.eval()
    device = next(model.parameters()).device
    seqs = encode_records(tok, records, max_len)
    loss_sum, correct, pairs, n = 0.0, 0.0, 0, 0
    probs = []
    for i in range(0, len(records), batch_size):
        scores, ranks, valid = forward_records(model, seqs[i : i + batch_size], records[i : i + batch_size],
                                               tok.pad_token_id, device)
        loss, stats = ranking_loss(scores, ranks, valid)
        loss_sum += loss.item() * len(scores)
        n += len(scores)
        correct += float(stats["accuracy"]) * int(stats["n_pairs"])
        pairs += int(stats["n_pairs"])
        better = (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        diff = scores[:, :, None] - scores[:, None, :]
        probs.append(torch.sigmoid(diff[better]).cpu())  # P(labelled winner wins) under the RM
    model.train()
    p = torch.cat(probs) if probs else torch.zeros(0)
    # calibration: bin by the RM's confidence max(p, 1-p); observed = how often the RM's pick was the label's
    conf, hit = torch.maximum(p, 1 - p), (p > 0.5).float()
    table = []
    for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
        m = (conf >= lo) & (conf < lo + 0.1 if lo < 0.9 else conf <= 1.0)
        if m.any():
            table.append({"bin": f"{lo:.1f}-{lo + 0.1:.1f}", "n": int(m.sum()),
                          "predicted": float(conf[m].mean()), "observed": float(hit[m].mean())})
    return {"eval/accuracy": correct / max(pairs, 1), "eval/loss": loss_sum / max(n, 1), "eval/pairs": pairs,
            "calibration": table}


def labeler_agreement(records: list[Ranking]) -> float | None:
    """Pairwise agreement between different labelers ranking the same responses (ties excluded), for
    reference: the same measure the web app reports for its batches."""
    groups: dict[tuple, list[Ranking]] = {}
    for r in records:
        groups.setdefault((prompt_key(r.prompt), tuple(r.responses)), []).append(r)
    agree = total = 0
    for rs in groups.values():
        for a, b in combinations(rs, 2):
            same, both = pairwise_agreement(a.ranking, b.ranking)
            agree, total = agree + same, total + both
    return agree / total if total else None


def set_normalisation(model: ScalarModel, tok, demos: list, ranked: list[Ranking], max_len: int, std: bool) -> dict:
    """bias = -mean raw score of demonstrations; gain = 1/std of raw scores of ranked responses."""
    scorer = RewardScorer.from_model(model, tok, max_len=max_len)
    if demos:
        raw = scorer.raw_scores([d.prompt for d in demos], [d.response for d in demos])
        model.bias = -float(raw.mean())
    if std and ranked:
        raw = scorer.raw_scores([r.prompt for r in ranked for _ in r.responses], [x for r in ranked for x in r.responses])
        model.gain = 1.0 / max(float(raw.std()), 1e-6)
    return {"rm/bias": model.bias, "rm/gain": model.gain}


def train_rm(cfg: RMConfig, model_path: str, rankings: list[Path], demos_path: Path | None, out: Path,
             log_dir: Path, force: bool = False) -> dict:
    """Train a reward model from ranking files; writes an RM folder to ``out``."""
    inputs = {"model": model_path, **{f"rankings{i}": p for i, p in enumerate(rankings)}}
    if demos_path:
        inputs["demos"] = demos_path
    fp = fingerprint("rm", cfg, inputs)
    if is_done(out, fp) and not force:
        return read_manifest(out)["metrics"]
    set_seed(cfg.seed)
    records: list[Ranking] = [r for p in rankings for r in read_records(p, "ranking", allow_empty=cfg.allow_empty)]
    if cfg.label_source.startswith("flags:"):
        records = relabel_by_flags(records, set(cfg.label_source.split(":", 1)[1].split(",")))
    if not records:
        raise ConfigError(f"no usable rankings in {', '.join(map(str, rankings))}")
    train, valid = split_by_prompt(records, cfg.valid_fraction, cfg.seed)
    if not train:
        raise ConfigError(f"no rankings left to train on after holding out valid_fraction={cfg.valid_fraction}")
    tok = load_tokenizer(model_path)
    model = ScalarModel.from_pretrained(model_path, tok)
    acc = make_accelerator()
    steps = math.ceil(len(train) / cfg.batch_size) * cfg.epochs
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = cosine_schedule(opt, steps, warmup_ratio=0.05)
    model, opt, sched = acc.prepare(model, opt, sched)
    seqs = encode_records(tok, train, cfg.max_len)
    tracker = Tracker(log_dir, f"rm-{out.name}", cfg.report_to)
    rng, step, start = random.Random(cfg.seed), 0, time.time()
    bar = progress(steps, f"reward model ({len(train)} rankings)")
    model.train()
    for _ in range(cfg.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            scores, ranks, valid_mask = forward_records(model, [seqs[j] for j in idx], [train[j] for j in idx],
                                                        tok.pad_token_id, acc.device)
            loss, stats = ranking_loss(scores, ranks, valid_mask)
            optimizer_step(acc, model, loss, opt, sched)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{float(stats['accuracy']):.2f}")
            tracker.log({"loss/train": loss.item(), "train/accuracy": float(stats["accuracy"]),
                         "train/margin": float(stats["margin"])}, step)
    bar.close()
    model = acc.unwrap_model(model)
    metrics = {"train/rankings": len(train), "eval/rankings": len(valid), "seconds": time.time() - start,
               "pairs_per_s": sum(len(r.responses) * (len(r.responses) - 1) / 2 for r in train) * cfg.epochs
               / max(time.time() - start, 1e-9)}
    if valid:
        metrics.update(evaluate(model, tok, valid, cfg.max_len, cfg.batch_size))
    agreement = labeler_agreement(records)
    if agreement is not None:
        metrics["data/labeler_agreement"] = agreement
    demos = read_records(demos_path, "demonstration", allow_empty=cfg.allow_empty) if demos_path else []
    metrics.update(set_normalisation(model, tok, demos, train, cfg.max_len, cfg.normalize_std))
    tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step)
    tracker.close()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, extra={"max_len": cfg.max_len})
        tok.save_pretrained(tmp)
        write_manifest(tmp, stage="rm", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                       inputs={k: str(v) for k, v in inputs.items()})
    return metrics
