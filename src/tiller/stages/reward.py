"""Stage 2: a reward model from K-wise rankings (InstructGPT section 3.5, eq. 1).

All K responses of one ranking go through the model as one batch element, so each response costs one
forward pass and all C(K,2) comparisons of a prompt share a gradient step (InstructGPT: shuffling pairs
as separate data points overfits and costs K-1 forwards per response). When several labelers ranked the
same responses, their rankings train as one element whose pair targets are the labelers' shares
(``preference_loss``): the same loss as one element per ranking, at one forward per response instead of
one per labeler. After training a bias is set so demonstrations score mean 0, and optionally a gain so
that the responses in the rankings (policy samples) have standard deviation 1; both are stored with the
checkpoint and applied whenever it scores. ``ensemble: N`` trains N such models in different data orders
and scores with their mean (``scoring.RewardScorer``).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel

from tiller import distributed
from tiller.adapters import LORA_HELP, LoraConfig, apply_lora
from tiller.batching import join
from tiller.chat import encode_prompt, encode_response, prompt_key
from tiller.config import ConfigError, field
from tiller.data import Ranking, read_records
from tiller.data.agreement import pairwise_agreement
from tiller.losses import pair_preferences, preference_loss
from tiller.models import (
    MEMBERS_DIR,
    ScalarModel,
    added_token_ids,
    enable_gradient_checkpointing,
    load_tokenizer,
)
from tiller.runs import atomic_dir, done_metrics, fingerprint, write_manifest
from tiller.scoring import score_sorted
from tiller.tracking import Tracker
from tiller.training import (
    CHECKPOINTING_HELP,
    PRECISION_HELP,
    Precision,
    autocast,
    cosine_schedule,
    gather_weights,
    loading_whole,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    progress,
    set_seed,
    zero_stage,
)


@dataclass
class RMConfig:
    epochs: int = field(1, help="passes over the rankings (InstructGPT: 1; more overfits)")
    lr: float = field(3e-4, help="peak learning rate (cosine schedule)")
    batch_size: int = field(16, help="items per step (an item: one prompt's K responses and its rankings)")
    merge_labelers: bool = field(True, help="one item per set of responses, targets averaged over its labelers "
                                            "(weighted by their number of rankings, so the same loss as false: one "
                                            "item per ranking record, at L times the forwards)")
    max_len: int = field(160, help="prompt+response tokens per response")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    valid_fraction: float = field(0.15, help="share of PROMPTS held out (all labelers' rankings of one prompt together)")
    label_source: str = field("ranking", help="'ranking', or 'flags:F1,F2' to rank unflagged above flagged answers (a rule RM)")
    normalize_std: bool = field(False, help="also set a gain so ranked responses score with std 1")
    norm_samples: int = field(2048, help="at most this many demonstrations, and this many ranked responses, "
                                         "(a seeded random subset) set the bias and gain: a mean and a std need a "
                                         "sample, not every answer (0: all)")
    ensemble: int = field(1, help="reward models trained on the same data in different orders; their scores "
                                  "average (Coste et al. 2023: ensembles are more accurate and curb overoptimisation)")
    allow_empty: bool = field(False, help="accept empty responses (model samples, HH-RLHF's empty replies)")
    mixed_precision: Precision = field("no", help=PRECISION_HELP)
    gradient_checkpointing: bool = field(False, help=CHECKPOINTING_HELP)
    lora: LoraConfig = field(default_factory=LoraConfig, help=LORA_HELP + " (the score head trains in full)")
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def validate(self) -> None:
        if self.ensemble < 1:
            raise ConfigError("ensemble must be >= 1")
        if self.norm_samples < 0:
            raise ConfigError("norm_samples must be >= 0")
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


@dataclass
class RankedItem:
    """One training element: K responses to a prompt and the share of labelers preferring i to j."""

    prompt: Any
    responses: list[str]
    prefs: list[list[float]]
    n_labels: int = 1


def answer_set(r: Ranking | RankedItem) -> tuple:
    """What identifies one set of answers to rank: its prompt and its responses, in order."""
    return prompt_key(r.prompt), tuple(r.responses)


def to_items(records: list[Ranking], merge: bool) -> list[RankedItem]:
    """Ranking records -> items; ``merge`` joins every ranking of the same prompt and responses.

    Targets are the labelers' shares, not a majority vote: majority targets (with or without dropping
    pairs that labelers split on) were no better on the default run (docs/results.md)."""
    groups: dict[Any, list[Ranking]] = {}
    for n, r in enumerate(records):
        groups.setdefault(answer_set(r) if merge else n, []).append(r)
    return [RankedItem(rs[0].prompt, rs[0].responses, pair_preferences([r.ranking for r in rs], len(rs[0].responses)),
                       len(rs)) for rs in groups.values()]


def encode_records(tok, records: list[Ranking] | list[RankedItem], max_len: int) -> list[list[list[int]]]:
    """Token ids of every response of every record or item, prompt encoded once per record."""
    out = []
    for r in records:
        p = encode_prompt(tok, r.prompt)
        out.append([join(p, encode_response(tok, resp), max_len)[0] for resp in r.responses])
    return out


def forward_items(model: ScalarModel, seqs: list[list[list[int]]], items: list[RankedItem], pad_id: int, device,
                  min_seqs: int = 0):
    """Scores (B, K_max), pair targets (B, K_max, K_max), valid (B, K_max) for a batch of items. ``min_seqs``:
    one-token fillers, scored and dropped, make up that many responses, so that ranks holding fewer run as
    many forwards as the others (under ZeRO-3 each forward gathers the weights from all ranks)."""
    k_max = max(len(s) for s in seqs)
    flat = [x for s in seqs for x in s]
    raw = score_sorted(model, flat + [flat[0][:1]] * (min_seqs - len(flat)), pad_id, device)[: len(flat)]
    scores = torch.zeros(len(seqs), k_max, device=device)
    prefs = torch.zeros(len(seqs), k_max, k_max, device=device)
    valid = torch.zeros(len(seqs), k_max, dtype=torch.bool, device=device)
    i = 0
    for row, (s, item) in enumerate(zip(seqs, items, strict=True)):
        k = len(s)
        scores[row, :k] = raw[i : i + k]
        prefs[row, :k, :k] = torch.tensor(item.prefs, device=device)
        valid[row, :k] = True
        i += k
    return scores, prefs, valid


@torch.no_grad()
def score_all(model: ScalarModel, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Raw scores of all ``seqs``, on every rank: each scores its block and the blocks are gathered. A rank
    short of sequences scores copies too, so every rank runs the same forwards (ZeRO-3 gathers in each).
    (N,), on the CPU"""
    mine, real = distributed.padded_share(seqs)
    raw = score_sorted(model, mine, pad_id, next(model.parameters()).device)[:real] if mine else torch.zeros(0)
    return distributed.gather_cat(raw.float().cpu())


@torch.no_grad()
def evaluate(models: list[ScalarModel], tok, records: list[Ranking], max_len: int) -> dict:
    """Held-out pairwise accuracy and loss against each labeler's ranking, plus a calibration table.

    Each distinct response set is scored once per member, however many labelers ranked it. An ensemble
    is scored by the mean of its members' raw scores (the loss sees only differences); with more than one
    member, each member's own accuracy is reported too."""
    sets = to_items(records, merge=True)
    where = {answer_set(s): n for n, s in enumerate(sets)}
    flat = [x for seqs in encode_records(tok, sets, max_len) for x in seqs]
    per_member = []
    for m in models:
        m.eval()
        per_member.append(score_all(m, flat, tok.pad_token_id))
    k_max = max(len(r.responses) for r in records)
    offsets = [0]
    for s in sets:
        offsets.append(offsets[-1] + len(s.responses))
    prefs = torch.zeros(len(records), k_max, k_max)
    valid = torch.zeros(len(records), k_max, dtype=torch.bool)
    rows = []  # flat index of each record's responses, padded with 0
    for n, r in enumerate(records):
        k, at = len(r.responses), offsets[where[answer_set(r)]]
        prefs[n, :k, :k] = torch.tensor(pair_preferences([r.ranking], k))
        valid[n, :k] = True
        rows.append(list(range(at, at + k)) + [0] * (k_max - k))
    index = torch.tensor(rows)
    scores = torch.stack(per_member).mean(0)[index]
    loss, stats = preference_loss(scores, prefs, valid)
    diff = scores[:, :, None] - scores[:, None, :]
    p = torch.sigmoid(diff[prefs > 0])  # P(labelled winner wins) under the RM
    # calibration: bin by the RM's confidence max(p, 1-p); observed = how often the RM's pick was the label's
    conf, hit = torch.maximum(p, 1 - p), (p > 0.5).float()
    table = []
    for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
        sel = (conf >= lo) & (conf < lo + 0.1 if lo < 0.9 else conf <= 1.0)
        if sel.any():
            table.append({"bin": f"{lo:.1f}-{lo + 0.1:.1f}", "n": int(sel.sum()),
                          "predicted": float(conf[sel].mean()), "observed": float(hit[sel].mean())})
    out = {"eval/accuracy": float(stats["accuracy"]), "eval/loss": float(loss), "eval/pairs": int(stats["n_pairs"]),
           "calibration": table}
    if len(models) > 1:
        for i, member in enumerate(per_member):
            out[f"eval/accuracy_member{i}"] = float(preference_loss(member[index], prefs, valid)[1]["accuracy"])
    return out


def labeler_agreement(records: list[Ranking]) -> float | None:
    """Pairwise agreement (``tiller.data.agreement.pairwise_agreement``: pairs either labeler tied are
    left out) between rankings of the same responses, pooled over pairs: the measure the web app reports
    for its batches, not the world manifest's half-credit one. None without two rankings of one set."""
    groups: dict[tuple, list[Ranking]] = {}
    for r in records:
        groups.setdefault(answer_set(r), []).append(r)
    agree = total = 0
    for rs in groups.values():
        for a, b in combinations(rs, 2):
            same, both = pairwise_agreement(a.ranking, b.ranking)
            agree, total = agree + same, total + both
    return agree / total if total else None


def set_normalisation(model: ScalarModel, pad_id: int, demo_seqs: list[list[int]],
                      answer_seqs: list[list[int]]) -> dict:
    """bias = -mean raw score of the demonstrations; gain = 1/std of the raw scores of ranked responses
    (left as it is when ``answer_seqs`` is empty). Every rank scores its share and sets the same values."""
    model.eval()
    if demo_seqs:
        model.bias = -float(score_all(model, demo_seqs, pad_id).mean())
    if answer_seqs:
        model.gain = 1.0 / max(float(score_all(model, answer_seqs, pad_id).std()), 1e-6)
    return {"rm/bias": model.bias, "rm/gain": model.gain}


def normalisation_seqs(tok, demos: list, answer_seqs: list[list[int]], max_len: int, limit: int,
                       seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the demonstrations and of the ranked responses that set the bias and gain, each at most
    ``limit`` (a seeded random subset; 0: all), built once for every member of an ensemble."""
    rng = random.Random(seed)

    def pick(xs: list) -> list:
        return rng.sample(xs, limit) if 0 < limit < len(xs) else xs

    demo_seqs = [join(encode_prompt(tok, d.prompt), encode_response(tok, d.response), max_len)[0]
                 for d in pick(demos)]
    return demo_seqs, pick(answer_seqs)


def _train_member(cfg: RMConfig, m: int, model_path: str, tok, items: list[RankedItem], seqs, steps: int,
                  tracker: Tracker, bar) -> tuple[ScalarModel, dict[str, torch.Tensor] | None]:
    """One reward model, and under ZeRO-3 its whole weights on the main process (else None) for the folder;
    member ``m`` of an ensemble differs from the others by its seed (data order)."""
    set_seed(cfg.seed + m)
    with loading_whole():  # members after the first load after a ZeRO-3 accelerator exists
        model = ScalarModel.from_pretrained(model_path, tok)
        if cfg.lora.enabled:
            model.hf = apply_lora(cast(PreTrainedModel, model.hf), cfg.lora, head="score",
                                  new_token_ids=added_token_ids(model_path, tok))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    acc = make_accelerator()
    if cfg.lora.enabled and zero_stage(acc) == 3:
        raise ConfigError("lora is not supported under DeepSpeed ZeRO-3 (its adapter folder is written from whole "
                          "weights); use configs/accelerate/deepspeed-zero2.yaml")
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = cosine_schedule(opt, steps, warmup_ratio=0.05)
    model, opt, sched = acc.prepare(model, opt, sched)
    rng, step, tag = random.Random(cfg.seed + m), 0, f"member{m}/" if cfg.ensemble > 1 else ""
    model.train()
    for _ in range(cfg.epochs):
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            # 1. this rank's block of the global batch; its loss is its part of the global weighted mean
            mine = distributed.my_share(idx)
            weight = float(sum(items[j].n_labels for j in idx if len(items[j].responses) >= 2))
            part = float(sum(items[j].n_labels for j in mine if len(items[j].responses) >= 2))
            rows = mine or idx[:1]  # a rank short of items joins with weight 0
            most = max(sum(len(seqs[j]) for j in (idx[lo:hi] or idx[:1]))  # responses of the fullest rank
                       for lo, hi in (distributed.shard_bounds(len(idx), index=r) for r in range(distributed.world_size())))
            with autocast(cfg.mixed_precision, acc.device):
                scores, prefs, valid_mask = forward_items(model, [seqs[j] for j in rows], [items[j] for j in rows],
                                                          tok.pad_token_id, acc.device, min_seqs=most)
            n_labels = torch.tensor([items[j].n_labels for j in rows], dtype=torch.float32, device=acc.device)
            local, stats = preference_loss(scores, prefs, valid_mask, n_labels)  # each ranking counts once
            # 2. backward (DDP averages the ranks' gradients), clip, step
            optimizer_step(acc, model, local * distributed.global_share(part, max(weight, 1e-9)), opt, sched)
            # the global batch's loss and label-weighted accuracy, for the logs
            pairs = stats["n_pairs"] * float(bool(mine))
            loss, correct, n_pairs = distributed.all_sum(torch.stack([local.detach() * part, stats["accuracy"] * pairs,
                                                                      pairs]).double()).tolist()
            loss, accuracy = loss / max(weight, 1e-9), correct / max(n_pairs, 1.0)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.2f}")
            tracker.log({f"{tag}loss/train": loss, f"{tag}train/accuracy": accuracy,
                         f"{tag}train/margin": float(stats["margin"])}, step)
    return acc.unwrap_model(model), gather_weights(acc, model)


def train_rm(cfg: RMConfig, model_path: str, rankings: list[Path], demos_path: Path | None, out: Path,
             log_dir: Path, force: bool = False) -> dict:
    """Train a reward model from ranking files; writes an RM folder to ``out``."""
    inputs: dict[str, str | Path] = {"model": model_path,
                                     **{f"rankings{i}": p for i, p in enumerate(rankings)}}
    if demos_path:
        inputs["demos"] = demos_path
    fp = fingerprint("rm", cfg, inputs)
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    set_seed(cfg.seed)
    records: list[Ranking] = [r for p in rankings for r in read_records(p, "ranking", allow_empty=cfg.allow_empty)]
    if cfg.label_source.startswith("flags:"):
        records = relabel_by_flags(records, set(cfg.label_source.split(":", 1)[1].split(",")))
    if not records:
        raise ConfigError(f"no usable rankings in {', '.join(map(str, rankings))}")
    train, valid = split_by_prompt(records, cfg.valid_fraction, cfg.seed)
    if not train:
        raise ConfigError(f"no rankings left to train on after holding out valid_fraction={cfg.valid_fraction}")
    items = to_items(train, cfg.merge_labelers)
    tok = load_tokenizer(model_path)
    seqs = encode_records(tok, items, cfg.max_len)
    tracker = Tracker(log_dir, f"rm-{out.name}", cfg.report_to)
    start = time.time()
    steps = math.ceil(len(items) / cfg.batch_size) * cfg.epochs
    label = f"reward model ({len(train)} rankings of {len(items)} response sets)"
    bar = progress(steps * cfg.ensemble, label if cfg.ensemble == 1 else f"{label}, ensemble of {cfg.ensemble}")
    trained = [_train_member(cfg, m, model_path, tok, items, seqs, steps, tracker, bar) for m in range(cfg.ensemble)]
    members, weights = [t[0] for t in trained], [t[1] for t in trained]
    bar.close()
    metrics = {"train/rankings": len(train), "train/items": len(items), "eval/rankings": len(valid),
               "seconds": time.time() - start,
               "pairs_per_s": sum(len(r.responses) * (len(r.responses) - 1) / 2 for r in train) * cfg.epochs
               * cfg.ensemble / max(time.time() - start, 1e-9)}
    # evaluation and normalisation: forwards only, every rank scoring its share (so all run the same
    # forwards, as ZeRO-3 needs) and computing the same numbers from the gathered scores
    if valid:
        metrics.update(evaluate(members, tok, valid, cfg.max_len))
    agreement = labeler_agreement(records)
    if agreement is not None:
        metrics["data/labeler_agreement"] = agreement
    demos = read_records(demos_path, "demonstration", allow_empty=cfg.allow_empty) if demos_path else []
    set_seqs = []  # each answer set once, whatever the labelers: the training items when they are merged
    if cfg.normalize_std:
        set_seqs = seqs if cfg.merge_labelers else encode_records(tok, to_items(train, merge=True), cfg.max_len)
    demo_seqs, answer_seqs = normalisation_seqs(tok, demos, [x for s in set_seqs for x in s], cfg.max_len,
                                                cfg.norm_samples, cfg.seed)
    for m, member in enumerate(members):
        norm = set_normalisation(member, tok.pad_token_id, demo_seqs, answer_seqs)
        metrics.update(norm if m == 0 else {f"{k}_member{m}": v for k, v in norm.items()})
    tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, steps)
    tracker.close()
    if distributed.is_main():  # the folder; under ZeRO-3 each member's weights were gathered here after training
        with atomic_dir(out) as tmp:
            # member 0 is the folder itself, so a single-RM reader (TRL, the value model's init) still loads it
            extra = [f"{MEMBERS_DIR}/{m}" for m in range(1, len(members))]
            members[0].save_pretrained(tmp, extra={"max_len": cfg.max_len, **({"members": extra} if extra else {})},
                                       merge=cfg.lora.merge, base=model_path, state_dict=weights[0])
            for sub, member, w in zip(extra, members[1:], weights[1:], strict=True):
                member.save_pretrained(tmp / sub, extra={"max_len": cfg.max_len}, merge=cfg.lora.merge,
                                       base=model_path, state_dict=w)
                tok.save_pretrained(tmp / sub)  # each member is a reward model of its own
            tok.save_pretrained(tmp)
            write_manifest(tmp, stage="rm", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                           inputs={k: str(v) for k, v in inputs.items()})
    distributed.barrier()
    metrics = distributed.broadcast(metrics)
    return metrics
