import math
import random

import pytest

from tiller.eval.elo import ELO_SCALE, elo_intervals, elo_ratings, fit_bradley_terry


def test_three_wins_in_four_is_400_log10_3():
    matches = [("A", "B", 1.0)] * 3 + [("A", "B", 0.0)]
    # MLE of sigmoid(d) = 3/4 is d = ln 3, i.e. 400 * log10(3) = 190.85 Elo points
    r = elo_ratings(matches, prior=0.0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000.0)
    # the default prior (precision 0.01) moves the optimum of 3 - 4 sigmoid(d) - 0.01 * d / 2 = 0 by
    # -0.01 * ln 3 / 2 / (4 * 3/16) = -0.00732 nats (to first order) = -1.27 Elo points
    r = elo_ratings(matches)
    assert r["A"] - r["B"] == pytest.approx(190.85 - 1.27, abs=0.05)


def test_ties_count_half_each_way():
    # two ties plus one win each is an even record; one win + two ties vs nothing is 2:1 in wins
    even = elo_ratings([("A", "B", 0.5), ("A", "B", 0.5), ("A", "B", 1.0), ("B", "A", 1.0)], prior=0.0)
    assert even["A"] == pytest.approx(even["B"], abs=1e-9)
    r = elo_ratings([("A", "B", 1.0), ("A", "B", 0.5), ("A", "B", 0.5)], prior=0.0)
    assert r["A"] - r["B"] == pytest.approx(ELO_SCALE * math.log(2), abs=1e-6)


def test_symmetric_results_give_equal_ratings():
    # a rock-paper-scissors cycle: every player is 1-1 with every other
    matches = [("rock", "scissors", 1.0), ("scissors", "paper", 1.0), ("paper", "rock", 1.0)] * 4
    r = elo_ratings(matches, anchor="rock")
    assert r["rock"] == 1000.0
    assert r["paper"] == pytest.approx(1000.0, abs=1e-6) and r["scissors"] == pytest.approx(1000.0, abs=1e-6)


def test_match_order_and_side_do_not_matter():
    rng = random.Random(0)
    names = ["base", "sft", "ppo", "bon"]
    strength = {"base": 0.0, "sft": 1.0, "ppo": 1.5, "bon": 1.2}
    matches = []
    for _ in range(300):
        a, b = rng.sample(names, 2)
        p = 1 / (1 + math.exp(strength[b] - strength[a]))
        matches.append((a, b, 1.0 if rng.random() < p else 0.0))
    r = elo_ratings(matches, anchor="base")
    shuffled = matches[:]
    rng.shuffle(shuffled)
    flipped = [(b, a, 1.0 - o) for a, b, o in shuffled]
    for other in (elo_ratings(shuffled, anchor="base"), elo_ratings(flipped, anchor="base")):
        assert other == pytest.approx(r, abs=1e-6)
    assert r["base"] == 1000.0 and r["ppo"] > r["sft"] > r["base"]


def test_undefeated_player_is_finite_with_prior():
    r = elo_ratings([("A", "B", 1.0)] * 5)
    assert math.isfinite(r["A"]) and r["A"] > r["B"] + 400


def test_bt_fit_matches_hand_solution_three_players():
    import numpy as np

    # A beat B twice, B beat C twice, never a loss: with an identity prior the MLE is
    # d/dr_A: 2 s(-(rA-rB)) - rA = 0 etc.; check the gradient vanishes instead of solving by hand
    w = np.array([[0, 2.0, 0], [0, 0, 2.0], [0, 0, 0]])
    r = fit_bradley_terry(w, prior=1.0)
    p = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    grad = (w - (w + w.T) * p).sum(1) - r
    assert np.abs(grad).max() < 1e-8 and r[0] > r[1] > r[2]


def test_intervals_cover_the_fit_and_shrink_with_data():
    few = [("A", "B", 1.0)] * 6 + [("A", "B", 0.0)] * 4
    many = few * 10
    small, big = elo_intervals(few, n_boot=100, anchor="B"), elo_intervals(many, n_boot=100, anchor="B")
    assert small["B"] == (1000.0, 1000.0)
    fit = elo_ratings(many, anchor="B")["A"]
    assert big["A"][0] < fit < big["A"][1]
    assert big["A"][1] - big["A"][0] < small["A"][1] - small["A"][0]
    assert elo_intervals(many, n_boot=100, anchor="B", seed=3) == elo_intervals(many, n_boot=100, anchor="B", seed=3)


def test_bad_inputs():
    assert elo_ratings([]) == {}
    with pytest.raises(ValueError, match="anchor"):
        elo_ratings([("A", "B", 1.0)], anchor="C")
    with pytest.raises(ValueError, match="outcomes"):
        elo_ratings([("A", "B", 2.0)])
