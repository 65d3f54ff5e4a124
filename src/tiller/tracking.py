"""Metrics: always to ``logs/metrics.jsonl``; to TensorBoard by default and to any tracker accelerate
knows (wandb, mlflow, aim, ...) by flag (``report_to=[...]``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # type: ignore[import-untyped]  # accelerate ships no py.typed

from tiller.distributed import is_main


class Tracker:
    """Logs namespaced scalars (``loss/policy``, ``objective/kl``) for one stage of a run; on the main
    process only (under data parallelism the other ranks' trackers do nothing, so a stage logs once)."""

    def __init__(self, log_dir: str | Path, stage: str, report_to: list[str] | tuple[str, ...] = ("tensorboard",)):
        self.enabled = is_main()
        self.log_dir = Path(log_dir)
        self.stage = stage
        self._trackers: list[Any] = []
        if not self.enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.log_dir / "metrics.jsonl", "a")
        for name in report_to:
            if name in ("none", "jsonl"):
                continue
            if name not in LOGGER_TYPE_TO_CLASS:
                raise ValueError(f"unknown tracker {name!r}; known: {', '.join(LOGGER_TYPE_TO_CLASS)}")
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = cls(stage, str(self.log_dir))
            else:
                tracker = cls(f"tiller-{stage}")
            if hasattr(tracker, "start"):  # accelerate >= 1.x creates the writer lazily
                tracker.start()
            self._trackers.append(tracker)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._jsonl.write(json.dumps({"stage": self.stage, "step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()
        for t in self._trackers:
            t.log(scalars, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        for t in self._trackers:
            t.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(log_dir: str | Path, stage: str | None = None) -> list[dict[str, Any]]:
    f = Path(log_dir) / "metrics.jsonl"
    if not f.is_file():
        return []
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [r for r in rows if stage is None or r.get("stage") == stage]


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (stage, step, metric names): the last one written, in step order.

    metrics.jsonl is append-only, so a stage resumed from a checkpoint logs the steps after that checkpoint
    twice, and a forced rerun logs them all again; plots want each step once, from the latest run."""
    last: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        last[(r.get("stage"), r.get("step"), tuple(sorted(k for k in r if k != "time")))] = r
    return sorted(last.values(), key=lambda r: (str(r.get("stage")), r.get("step") or 0))
