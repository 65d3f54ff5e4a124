"""The two labeler-agreement measures, worked by hand on one pair of rankings where they differ."""

from __future__ import annotations

import pytest

from tiller.data import Ranking
from tiller.data.agreement import half_credit_agreement, pair_counts, pairwise_agreement

# a: 0 > 1 = 2 > 3        b: 1 > 0 > 2 = 3
A = [[0], [1, 2], [3]]
B = [[1], [0], [2, 3]]
# pairs: (0,1) opposite; (0,2) same; (0,3) same; (1,2) tied in a only; (1,3) same; (2,3) tied in b only


def test_pair_counts_by_hand() -> None:
    assert pair_counts(A, B) == (3, 1, 1, 1, 0)  # concordant, discordant, tied in a, tied in b, in both


def test_pairwise_agreement_leaves_ties_out() -> None:
    # 4 pairs ordered by both, 3 of them the same way
    assert pairwise_agreement(A, B) == (3, 4)


def test_half_credit_agreement_counts_ties() -> None:
    # 3 same + 0 opposite + 2 * 0.5 for the pairs one ranking ties, over all 6 pairs
    assert half_credit_agreement(A, B) == (4.0, 6)
    # a pair both tie is full agreement here, and no pair at all for the ties-excluded measure
    assert half_credit_agreement([[0, 1]], [[0, 1]]) == (1.0, 1)
    assert pairwise_agreement([[0, 1]], [[0, 1]]) == (0, 0)


def test_reward_stage_pools_pairwise_agreement_over_answer_sets() -> None:
    from tiller.stages.reward import labeler_agreement

    def rec(responses: list[str], ranking: list[list[int]], labeler: str) -> Ranking:
        return Ranking(prompt="p", responses=responses, ranking=ranking, labeler=labeler)

    answers, other = ["w", "x", "y", "z"], ["u", "v"]
    records = [rec(answers, A, "ana"), rec(answers, B, "bo"), rec(other, [[0], [1]], "ana"),
               rec(other, [[1], [0]], "bo"), rec(["s", "t"], [[0], [1]], "chi")]  # ranked once: adds nothing
    # (3 + 0) same of (4 + 1) ordered by both
    assert labeler_agreement(records) == pytest.approx(3 / 5)
    assert labeler_agreement(records[-1:]) is None
