"""Agreement maths against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tiller.data.agreement import batch_agreement, kendall_tau_b, pair_counts, pairwise_agreement


def test_pair_counts_and_agreement_exclude_ties() -> None:
    # a: 0 > 1 > 2      b: 1 > 0 = 2
    # (0,1): a says 0>1, b says 1>0 -> discordant; (0,2): tied in b -> excluded; (1,2): both 1>2 -> concordant
    a, b = [[0], [1], [2]], [[1], [0, 2]]
    assert pair_counts(a, b) == (1, 1, 0, 1, 0)
    assert pairwise_agreement(a, b) == (1, 2)
    # tau-b = (1 - 1) / sqrt((3 - 0) * (3 - 1)) = 0
    assert kendall_tau_b(a, b) == 0.0


def test_tau_b_with_a_tie_by_hand() -> None:
    # a: 0 > 1 = 2 > 3    b: 0 > 1 > 2 > 3
    # six pairs: (1,2) tied in a only; the other five concordant. n0 = 6, n1 = 1, n2 = 0
    a, b = [[0], [1, 2], [3]], [[0], [1], [2], [3]]
    assert pairwise_agreement(a, b) == (5, 5)
    assert kendall_tau_b(a, b) == pytest.approx(5 / math.sqrt(5 * 6))  # 0.91287...
    assert kendall_tau_b(a, b) == pytest.approx(0.912870929)


def test_tau_b_extremes_and_undefined() -> None:
    order = [[0], [1], [2], [3]]
    assert kendall_tau_b(order, order) == 1.0
    assert kendall_tau_b(order, order[::-1]) == -1.0
    assert pairwise_agreement(order, order[::-1]) == (0, 6)
    assert kendall_tau_b([[0, 1, 2]], order) is None  # a ranking that ties everything: undefined


def test_one_swap_of_four() -> None:
    # b swaps the middle two: 5 concordant, 1 discordant -> agreement 5/6, tau = 4/6
    a, b = [[0], [1], [2], [3]], [[0], [2], [1], [3]]
    assert pairwise_agreement(a, b) == (5, 6)
    assert kendall_tau_b(a, b) == pytest.approx(4 / 6)


def test_batch_agreement_pools_items_and_labelers() -> None:
    rankings = {
        "x": {"ana": [[0], [1], [2]], "ben": [[1], [0, 2]]},  # 1 of 2, tau 0
        "y": {"ana": [[0], [1], [2], [3]], "ben": [[0], [2], [1], [3]], "chi": [[0], [1], [2], [3]]},
        "z": {"ana": [[1], [0]]},  # one labeler: contributes nothing
    }
    r = batch_agreement(rankings)
    # y: ana-ben 5/6 (tau 4/6), ana-chi 6/6 (tau 1), ben-chi 5/6 (tau 4/6)
    assert (r.agree, r.compared) == (1 + 5 + 6 + 5, 2 + 6 + 6 + 6)
    assert r.agreement == pytest.approx(17 / 20)
    assert r.tau_b == pytest.approx((0 + 4 / 6 + 1 + 4 / 6) / 4)
    assert r.labeler_agreement("ana") == pytest.approx((1 + 5 + 6) / (2 + 6 + 6))
    assert r.labeler_agreement("chi") == pytest.approx((6 + 5) / 12)
    assert batch_agreement({}).agreement is None
