"""Trajectory segments (clips) and the bounded buffer of recent ones that comparisons are drawn from.

A segment is ``length`` consecutive steps of one episode: what the policy saw (obs), what it did (acts), the
environment's reward (read only by the oracle and by evaluation, never by the predictor or the policy) and,
for MuJoCo, the simulator state per step so the clip can be replayed and rendered later for people.
Christiano et al. (2017) sec. 2.2: humans compare pairs of short clips (1-2 s) of recent policy behaviour.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Keys of Segment.to_npz_dict: every value is a numpy array, so `np.savez(path, **d)` and
# `np.load(path, allow_pickle=False)` round-trip it (strings as 0-d unicode arrays).
_NPZ_KEYS = ("id", "obs", "acts", "true_rewards", "states", "env_id", "step")


@dataclass
class Segment:
    """One clip. obs (T, obs_dim) float32, acts (T, act_dim) float32, true_rewards (T,), states (T, nq+nv).

    Step t of the clip: obs[t] was observed, acts[t] taken from it, true_rewards[t] received for it, and
    states[t] is the MuJoCo qpos|qvel at obs[t] (before the action). ``step`` is the global env step at the
    clip's end, for schedules and plots.
    """

    id: str
    obs: np.ndarray
    acts: np.ndarray
    true_rewards: np.ndarray
    states: np.ndarray | None
    env_id: str
    step: int

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to_npz_dict(self) -> dict[str, Any]:
        """Plain numpy arrays (no pickles); ``states`` is absent when None."""
        d: dict[str, Any] = {
            "id": np.array(self.id),
            "obs": self.obs,
            "acts": self.acts,
            "true_rewards": self.true_rewards,
            "env_id": np.array(self.env_id),
            "step": np.array(self.step, dtype=np.int64),
        }
        if self.states is not None:
            d["states"] = self.states
        return d

    @classmethod
    def from_npz_dict(cls, d: Any) -> Segment:
        """Inverse of ``to_npz_dict``; ``d`` may be a dict or an ``np.load`` result."""
        return cls(
            id=str(d["id"]),
            obs=np.asarray(d["obs"], dtype=np.float32),
            acts=np.asarray(d["acts"], dtype=np.float32),
            true_rewards=np.asarray(d["true_rewards"]),
            states=np.asarray(d["states"]) if "states" in d else None,
            env_id=str(d["env_id"]),
            step=int(d["step"]),
        )


def cut(obs: np.ndarray, acts: np.ndarray, true_rewards: np.ndarray, states: np.ndarray | None, length: int,
        env_id: str, step: int, tag: str) -> list[Segment]:
    """One episode's N steps -> N // length non-overlapping clips of ``length`` steps (the tail is dropped).

    ``step`` is the global env step at the episode's end (after its last step), so clip i ends at
    ``step - (N - (i + 1) * length)``. Ids are ``f"{tag}-{start}"``: pass a tag unique per episode, e.g.
    ``f"{run_tag}-{episode}"``.
    """
    if length < 1:
        raise ValueError(f"segment length must be >= 1, got {length}")
    n = len(obs)
    if len(acts) != n or len(true_rewards) != n or (states is not None and len(states) != n):
        raise ValueError(f"episode arrays differ in length: obs {n}, acts {len(acts)}, rewards "
                         f"{len(true_rewards)}, states {None if states is None else len(states)}")
    obs = np.asarray(obs, dtype=np.float32).reshape(n, -1)
    acts = np.asarray(acts, dtype=np.float32).reshape(n, -1)
    rewards = np.asarray(true_rewards, dtype=np.float64).reshape(n)
    out = []
    for start in range(0, n - length + 1, length):
        end = start + length
        out.append(Segment(
            id=f"{tag}-{start}", obs=obs[start:end].copy(), acts=acts[start:end].copy(),
            true_rewards=rewards[start:end].copy(),
            states=None if states is None else np.asarray(states[start:end], dtype=np.float64).copy(),
            env_id=env_id, step=int(step - (n - end))))
    return out


def mujoco_state(env: Any) -> np.ndarray | None:
    """qpos|qvel of a MuJoCo env's simulator now, (nq+nv,) float64; None for a non-MuJoCo env."""
    data = getattr(env.unwrapped, "data", None)
    if data is None or not hasattr(data, "qpos"):
        return None
    return np.concatenate([data.qpos, data.qvel]).astype(np.float64)


def set_mujoco_state(env: Any, state: np.ndarray) -> None:
    """Put a MuJoCo env's simulator in ``state`` (qpos|qvel, as ``mujoco_state`` returns), e.g. to render."""
    nq = env.unwrapped.model.nq
    env.unwrapped.set_state(state[:nq], state[nq:])


def index_pairs(pairs: list[tuple[Segment, Segment]]) -> tuple[list[Segment], list[int], list[int]]:
    """Each clip of ``pairs`` once (first-seen order), and each pair as the indices of its two clips in it:
    a clip compared many times is stored and run through a network once."""
    index: dict[str, int] = {}
    segs: list[Segment] = []
    for pair in pairs:
        for seg in pair:
            if seg.id not in index:
                index[seg.id] = len(segs)
                segs.append(seg)
    return segs, [index[a.id] for a, _ in pairs], [index[b.id] for _, b in pairs]


class SegmentBuffer:
    """Bounded FIFO of recent segments: the oldest go first, so queries show recent policy behaviour."""

    def __init__(self, capacity: int, seed: int):
        if capacity < 2:
            raise ValueError(f"a buffer that pairs segments needs capacity >= 2, got {capacity}")
        self.capacity = capacity
        self._segs: deque[Segment] = deque(maxlen=capacity)
        self._rng = np.random.default_rng(seed)

    def add(self, seg: Segment) -> None:
        self._segs.append(seg)

    def __len__(self) -> int:
        return len(self._segs)

    def __iter__(self) -> Iterator[Segment]:
        """Oldest first (a snapshot: adding while iterating is safe)."""
        return iter(list(self._segs))

    def sample_pairs(self, n: int) -> list[tuple[Segment, Segment]]:
        """``n`` random pairs of two different segments; no pair repeats until every pair has been drawn.

        The order within a pair is random too, so neither side (left/right on a page) is favoured.
        """
        m = len(self._segs)
        if m < 2:
            raise ValueError(f"sample_pairs needs at least 2 segments, the buffer holds {m}")
        n_all = m * (m - 1) // 2
        idx: list[tuple[int, int]] = []
        if n * 2 >= n_all:  # dense: shuffle the list of all pairs (repeating it if n > n_all)
            every = list(itertools.combinations(range(m), 2))
            while len(idx) < n:
                idx.extend(every[i] for i in self._rng.permutation(n_all))
            idx = idx[:n]
        else:  # sparse: rejection sampling, at most half the pairs are taken so it stays cheap
            seen: set[tuple[int, int]] = set()
            while len(idx) < n:
                i, j = (int(x) for x in self._rng.choice(m, size=2, replace=False))
                key = (min(i, j), max(i, j))
                if key not in seen:
                    seen.add(key)
                    idx.append((i, j))
        segs = list(self._segs)
        flips = self._rng.random(n) < 0.5
        return [(segs[j], segs[i]) if f else (segs[i], segs[j]) for (i, j), f in zip(idx, flips, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of numpy arrays: ``np.savez(path, **buf.state_dict())`` saves it, no pickles."""
        out: dict[str, Any] = {
            "capacity": np.array(self.capacity, dtype=np.int64),
            "count": np.array(len(self._segs), dtype=np.int64),
            # the generator's state as JSON, so a resumed run draws the same pairs as an unbroken one
            "rng": np.array(json.dumps(self._rng.bit_generator.state)),
        }
        for i, seg in enumerate(self._segs):
            for k, v in seg.to_npz_dict().items():
                out[f"seg{i}/{k}"] = v
        return out

    def load_state_dict(self, d: Any) -> None:
        """Inverse of ``state_dict``; ``d`` may be a dict or an ``np.load`` result."""
        self.capacity = int(d["capacity"])
        segs = []
        for i in range(int(d["count"])):
            prefix = f"seg{i}/"
            segs.append(Segment.from_npz_dict({k: d[prefix + k] for k in _NPZ_KEYS if prefix + k in d}))
        self._segs = deque(segs, maxlen=self.capacity)
        self._rng.bit_generator.state = json.loads(str(d["rng"]))
