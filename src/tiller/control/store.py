"""The run folder's clip files: clips, the query buffer and the comparisons as plain ``.npz`` arrays (no
pickles), for checkpoints, the finished run and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tiller.control.predictor import Comparison
from tiller.control.segments import Segment, SegmentBuffer, index_pairs


def save_segments(path: Path, segs: list[Segment], **arrays: np.ndarray) -> None:
    """Clips of one shape stacked into a few arrays of one .npz (no pickles; a zip entry per clip and field
    made a 1,000-clip buffer take seconds to write), with extra arrays beside them."""
    d: dict[str, np.ndarray] = {"count": np.array(len(segs))}
    if segs:
        d.update(ids=np.array([s.id for s in segs]), env_ids=np.array([s.env_id for s in segs]),
                 steps=np.array([s.step for s in segs], dtype=np.int64), obs=np.stack([s.obs for s in segs]),
                 acts=np.stack([s.acts for s in segs]), true_rewards=np.stack([s.true_rewards for s in segs]))
        if all(s.states is not None for s in segs):
            d["states"] = np.stack([s.states for s in segs])  # type: ignore[misc]
    np.savez(path, **{**d, **arrays})  # type: ignore[arg-type]  # numpy's stub types allow_pickle in **kwds


def load_segments(path: Path) -> tuple[list[Segment], Any]:
    data = np.load(path, allow_pickle=False)
    n = int(data["count"])
    if n == 0:
        return [], data
    ids, env_ids, steps = data["ids"], data["env_ids"], data["steps"]
    obs, acts, rewards = data["obs"], data["acts"], data["true_rewards"]
    states = data["states"] if "states" in data.files else None
    return [Segment(str(ids[i]), obs[i], acts[i], rewards[i], None if states is None else states[i],
                    str(env_ids[i]), int(steps[i])) for i in range(n)], data


def save_buffer(path: Path, buffer: SegmentBuffer) -> None:
    state = buffer.state_dict()
    save_segments(path, list(buffer), capacity=state["capacity"], rng=state["rng"])


def load_buffer(path: Path, buffer: SegmentBuffer) -> None:
    segs, data = load_segments(path)
    state = {"capacity": data["capacity"], "count": np.array(len(segs)), "rng": data["rng"]}
    state.update({f"seg{i}/{k}": v for i, s in enumerate(segs) for k, v in s.to_npz_dict().items()})
    buffer.load_state_dict(state)


def save_comparisons(path: Path, comps: list[Comparison]) -> None:
    """Each clip once, and the comparisons as indices a, b into them with their labels mu."""
    segs, a, b = index_pairs([(c.a, c.b) for c in comps])
    save_segments(path, segs, a=np.array(a, dtype=np.int64), b=np.array(b, dtype=np.int64),
                  mu=np.array([c.mu for c in comps], dtype=np.float64))


def load_comparisons(path: Path) -> list[Comparison]:
    segs, data = load_segments(path)
    return [Comparison(segs[int(a)], segs[int(b)], float(mu)) for a, b, mu in zip(data["a"], data["b"], data["mu"],
                                                                                 strict=True)]
