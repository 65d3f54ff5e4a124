"""Which pairs of clips to ask about, and how many labels should exist by each env step.

Christiano et al. (2017) sec. 2.2.4: sample many candidate pairs, let each ensemble member predict which clip
will be preferred, and ask about the pairs with the highest variance across members. Appendix A: labels are
requested at a rate that decreases as training goes on, with a batch from the initial random policy first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tiller.control.predictor import RewardEnsemble, preference_probs
from tiller.control.segments import Segment, index_pairs

QUERY_MODES = ("disagreement", "uniform")


def disagreement(ens: RewardEnsemble, pairs: list[tuple[Segment, Segment]], label_noise: float) -> np.ndarray:
    """(n,) variance over members of P(a > b) (population variance; 0 with one member)."""
    if not pairs:
        return np.zeros(0)
    segs, ia, ib = index_pairs(pairs)  # one forward over the distinct clips, however often each appears
    rets = ens.member_returns(segs)  # (K, n_segments)
    p = preference_probs(rets[:, ia], rets[:, ib], label_noise)  # (K, n_pairs)
    return p.double().var(0, correction=0).numpy()


def select_queries(ens: RewardEnsemble, candidates: list[tuple[Segment, Segment]], k: int, mode: str,
                   rng: np.random.Generator) -> list[int]:
    """Indices into ``candidates`` of the ``k`` pairs to ask about (fewer if there are fewer distinct pairs).

    "disagreement": the k largest variances, largest first (ties by position, so the choice is
    deterministic); "uniform": k drawn at random with ``rng``. The same two clips are never asked about twice
    in one call (a buffer smaller than the request repeats pairs among the candidates).
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"query mode must be one of {QUERY_MODES}, got {mode!r}")
    if k <= 0 or not candidates:
        return []
    if mode == "uniform":
        order = rng.permutation(len(candidates))
    else:
        order = np.argsort(-disagreement(ens, candidates, ens.cfg.label_noise), kind="stable")
    chosen: list[int] = []
    seen: set[frozenset[str]] = set()
    for i in order:
        key = frozenset((candidates[i][0].id, candidates[i][1].id))
        if key not in seen:
            seen.add(key)
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return chosen


def label_schedule(total_labels: int, total_steps: int, initial: int,
                   timescale: float | None = None) -> Callable[[int], int]:
    """labels(t): how many labels should exist by env step t (an int, non-decreasing in t).

    Appendix A of the paper asks for a batch of labels on clips of the initial random policy before RL
    starts (25% of all labels in the MuJoCo runs: pass initial = total_labels // 4), then labels at a rate
    roughly proportional to c / (t + c) (c = 2e6 steps for MuJoCo, 5e6 frames for Atari). Our runs are
    orders of magnitude shorter, so c scales with the budget: by default c = total_steps / 5, so that the
    last step's rate is a sixth of the first's (``timescale`` sets c). Integrating the rate gives

        labels(t) = initial + (total_labels - initial) * log(1 + t / c) / log(1 + total_steps / c),

    floored to an integer: ``initial`` at t = 0, exactly ``total_labels`` from t = total_steps on.
    """
    if not 0 <= initial <= total_labels:
        raise ValueError(f"need 0 <= initial <= total_labels, got initial {initial}, total {total_labels}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    c = float(timescale) if timescale is not None else total_steps / 5
    if c <= 0:
        raise ValueError(f"timescale must be positive, got {c}")
    later = total_labels - initial
    norm = math.log1p(total_steps / c)

    def labels(t: int) -> int:
        if t <= 0:
            return initial
        if t >= total_steps:
            return total_labels
        return min(total_labels, initial + int(later * math.log1p(t / c) / norm))

    return labels
