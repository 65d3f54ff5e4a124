"""Who compares clips for ``tiller control run``: the synthetic oracle, or people in ``tiller app``.

The loop only asks and collects (Christiano et al. 2017 sec. 2.2: labelling runs asynchronously with the
policy and the predictor), so the two sources share one small protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tiller.config import ConfigError
from tiller.control.config import ControlConfig
from tiller.control.oracle import oracle_preference
from tiller.control.predictor import Comparison
from tiller.control.segments import Segment

Pair = tuple[Segment, Segment]


class ComparisonSource(Protocol):
    """Who compares clips. ``ask`` hands over pairs and returns at once; ``collect`` returns the answers that
    arrived since its last call (possibly none). A source that keeps state across a kill (the app's pending
    batch) may also have ``state_dict() -> dict`` (JSON-able) and ``load_state_dict(d)``."""

    def ask(self, pairs: list[Pair]) -> None: ...

    def collect(self) -> list[Comparison]: ...


class OracleSource:
    """The paper's synthetic labeler (sec. 3.1): answers at once from the true returns."""

    def __init__(self, tie_eps: float = 0.0):
        self.tie_eps = tie_eps
        self._answers: list[Comparison] = []

    def ask(self, pairs: list[Pair]) -> None:
        self._answers += [Comparison(a, b, oracle_preference(a, b, self.tie_eps)) for a, b in pairs]

    def collect(self) -> list[Comparison]:
        out, self._answers = self._answers, []
        return out


def make_source(cfg: ControlConfig, out: Path) -> ComparisonSource:
    """The oracle, or people in ``tiller app`` through ``tiller.control.app_source.AppSource``."""
    if cfg.source == "oracle":
        return OracleSource(cfg.oracle_tie_eps)
    try:
        from tiller.control.app_source import AppSource
    except ImportError as e:
        raise ConfigError(f"source=app needs the app extra and tiller.control.app_source ({e})") from None
    batch = cfg.app.batch_prefix or f"control-{out.parent.name}"
    return AppSource(cfg.app, batch_prefix=batch, clips_dir=cfg.app.clips_dir or out.parent / "control-clips",
                     env_id=cfg.env, env_kwargs=cfg.env_kwargs)
