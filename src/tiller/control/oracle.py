"""The synthetic labeler: prefers the clip with the larger true return (Christiano et al. 2017, sec. 3.1).

The paper's "synthetic oracle" answers exactly as the environment's reward says; it is the only reader of
``Segment.true_rewards`` in training (evaluation reads it too). People replace it through the app.
"""

from __future__ import annotations

import numpy as np

from tiller.control.segments import Segment


def oracle_preference(a: Segment, b: Segment, tie_eps: float = 0.0) -> float:
    """P(a preferred): 1.0 if a's true return is larger, 0.0 if b's, 0.5 if they differ by at most tie_eps."""
    diff = float(np.sum(a.true_rewards, dtype=np.float64) - np.sum(b.true_rewards, dtype=np.float64))
    if abs(diff) <= tie_eps:
        return 0.5
    return 1.0 if diff > 0 else 0.0
