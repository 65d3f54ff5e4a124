"""``source: app`` for the training loop: :class:`.app_source.AppComparisonSource` set up from the run's
``AppSourceConfig``, with a state the loop can keep in its JSON loop state.

The source's own state is numpy arrays (the open batches' segments among them); here it travels as one
``np.savez`` archive, base64-encoded, so it is saved and restored together with the loop's comparisons and
never holds a pickle.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from .app_source import DEFAULT_TASK, AppComparisonSource
from .config import AppSourceConfig
from .predictor import Comparison
from .segments import Segment


class AppSource:
    """People in ``tiller app`` compare the loop's clip pairs (see :class:`AppComparisonSource`)."""

    def __init__(self, cfg: AppSourceConfig, batch_prefix: str, clips_dir: Path, env_id: str):
        self.source = AppComparisonSource(cfg.db, Path(clips_dir), batch_prefix, env_id, overlap=cfg.overlap,
                                          task=cfg.task.strip() or DEFAULT_TASK)

    def ask(self, pairs: list[tuple[Segment, Segment]]) -> None:
        self.source.ask(pairs)

    def collect(self) -> list[Comparison]:
        return self.source.collect()

    def pending(self) -> int:
        return self.source.pending()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"npz": base64 of np.savez(source.state_dict())}``."""
        buf = io.BytesIO()
        np.savez(buf, **self.source.state_dict())  # type: ignore[arg-type]
        return {"npz": base64.b64encode(buf.getvalue()).decode("ascii")}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        with np.load(io.BytesIO(base64.b64decode(d["npz"])), allow_pickle=False) as data:
            self.source.load_state_dict(data)

    def close(self) -> None:
        self.source.close()
