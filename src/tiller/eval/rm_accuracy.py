"""A reward model against the gold judge: how often it orders two answers as the noiseless judge does.

The RM learned from noisy labelers; its accuracy against them (``eval/accuracy`` of ``tiller rm``) is capped
by their agreement, its accuracy against the gold judge is not. Only evaluation sees the judge, so the
figure is computed here, after training, from the RM folder and the rankings it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiller.data import read_records
from tiller.runs import atomic_write_text
from tiller.scoring import RewardScorer
from tiller.stages.reward import RMConfig, split_by_prompt, to_items

CACHE_FILE = "gold-accuracy.json"


def rm_gold_accuracy(judge: Any, rm_dir: Path, rankings: list[Path], rm_cfg: RMConfig) -> float:
    """On the RM's held-out prompts: share of answer pairs with a strict gold preference that the RM orders
    as ``judge.score`` does.

    Kept in ``rm_dir/gold-accuracy.json``: the RM folder is replaced whenever the RM is retrained, so a
    rerun that skips the RM stage reads the figure instead of scoring the held-out set again."""
    cache = Path(rm_dir) / CACHE_FILE
    key = [str(p) for p in rankings]
    if cache.is_file() and (saved := json.loads(cache.read_text())).get("rankings") == key:
        return float(saved["gold_accuracy"])
    acc = _gold_accuracy(judge, Path(rm_dir), rankings, rm_cfg)
    atomic_write_text(cache, json.dumps({"rankings": key, "gold_accuracy": acc}))
    return acc


def _gold_accuracy(judge: Any, rm_dir: Path, rankings: list[Path], rm_cfg: RMConfig) -> float:
    records = [x for p in rankings for x in read_records(p, "ranking", allow_empty=True)]
    _, held_out = split_by_prompt(records, rm_cfg.valid_fraction, rm_cfg.seed)  # the split `tiller rm` held out
    items = to_items(held_out, merge=True)  # each answer set once, whatever the labelers
    flat = [(r.prompt, x) for r in items for x in r.responses]
    scores = RewardScorer(str(rm_dir)).score([p for p, _ in flat], [x for _, x in flat])  # one batched pass
    right, total, start = 0, 0, 0
    for r in items:
        s = scores[start : start + len(r.responses)]
        start += len(r.responses)
        gold = [judge.score(r.prompt, x) for x in r.responses]
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if abs(gold[i] - gold[j]) > 1e-6:
                    total += 1
                    right += (s[i] > s[j]) == (gold[i] > gold[j])
    return right / max(total, 1)
