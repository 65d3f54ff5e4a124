"""tiller.losses against numbers worked out by hand, and fast code against plain loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tiller.losses import (
    AdaptiveKLController,
    FixedKLController,
    MovingBaseline,
    entropy_from_logits,
    gae,
    gae_reference,
    grpo_advantages,
    kl_penalized_rewards,
    kl_to_go,
    last_token_index,
    logprobs_from_logits,
    masked_lm_loss,
    masked_mean,
    masked_var,
    masked_whiten,
    pair_preferences,
    ppo_policy_loss,
    ppo_value_loss,
    preference_loss,
    ranking_loss,
    ranks_from_groups,
    rloo_advantages,
    token_count,
)


def ls(x: float) -> float:
    """log sigmoid(x) = -log(1 + e^-x), written out so the tests do not reuse the code under test."""
    return -math.log(1.0 + math.exp(-x))


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(got: torch.Tensor, want: list) -> None:
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64))


# --- masked statistics -------------------------------------------------------------------------------


def test_masked_mean_var_whiten():
    x = t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0])
    mask = t([1, 1, 1], [1, 0, 0])
    # real entries 1,2,3,4: mean 2.5; squared deviations 2.25,.25,.25,2.25 sum 5
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.0])
    assert masked_var(x, mask).item() == pytest.approx(5 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(5 / 4)
    w = masked_whiten(x, mask)
    assert w[1, 1:].tolist() == [0.0, 0.0]  # padding stays 0
    assert w[0, 0].item() == pytest.approx(-1.5 / math.sqrt(5 / 3), rel=1e-6)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    assert masked_mean(masked_whiten(x, mask, shift_mean=False), mask).item() == pytest.approx(2.5)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # empty mask: 0, not NaN
    with pytest.raises(ValueError):
        masked_var(x, t([1, 0, 0], [0, 0, 0]))


# --- log-probabilities -------------------------------------------------------------------------------


def test_logprobs_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # softmax = [1/4, 3/4]
    labels = torch.tensor([[1, 0]])
    assert logprobs_from_logits(logits, labels)[0].tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    # temperature 2: logits [0, log sqrt 3] -> p1 = sqrt3 / (1 + sqrt3)
    s3 = math.sqrt(3.0)
    assert logprobs_from_logits(logits, labels, temperature=2.0)[0, 0].item() == pytest.approx(
        math.log(s3 / (1 + s3))
    )
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits)[0].tolist() == pytest.approx([h, h], rel=1e-6)
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))


def test_logprobs_match_log_softmax_and_low_precision_path():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    want = F.log_softmax(logits / 0.7, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels, 0.7), want)
    got_bf16 = logprobs_from_logits(logits.bfloat16(), labels, 0.7)
    assert got_bf16.dtype == torch.float32
    torch.testing.assert_close(got_bf16, want, atol=0.05, rtol=0.02)


def test_last_token_index_left_right_none():
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1],  # left padded -> 4
            [1, 1, 1, 0, 0],  # right padded -> 2
            [1, 1, 1, 1, 1],  # no padding -> 4
            [0, 1, 0, 0, 0],  # both sides -> 1
        ]
    )
    assert last_token_index(mask).tolist() == [4, 2, 4, 1]
    assert last_token_index(mask.bool()).tolist() == [4, 2, 4, 1]
    assert last_token_index(mask.float()).dtype == torch.long


# --- ranking loss ------------------------------------------------------------------------------------


def _rl(scores, ranks, valid=None):
    s = torch.tensor([scores], dtype=torch.float64)
    r = torch.tensor([ranks])
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else torch.tensor([valid])
    return ranking_loss(s, r, v)


def test_ranking_loss_k2():
    loss, stats = _rl([2.0, 0.0], [0, 1])
    assert loss.item() == pytest.approx(-ls(2.0))  # = log(1 + e^-2)
    assert stats["accuracy"].item() == 1.0 and stats["n_pairs"].item() == 1
    loss, stats = _rl([2.0, 0.0], [1, 0])  # second response preferred: pair (1, 0), s1 - s0 = -2
    assert loss.item() == pytest.approx(-ls(-2.0))
    assert stats["accuracy"].item() == 0.0 and stats["margin"].item() == pytest.approx(-2.0)
    loss, stats = _rl([1.0, 1.0], [0, 1])  # equal scores: log 2, accuracy counts half
    assert loss.item() == pytest.approx(math.log(2.0))
    assert stats["accuracy"].item() == 0.5


def test_ranking_loss_k3():
    # pairs (0,1): 1, (0,2): 2, (1,2): 1 -> -(ls(1) + ls(2) + ls(1)) / C(3,2)
    loss, stats = _rl([1.0, 0.0, -1.0], [0, 1, 2])
    want = (2 * math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-2.0))) / 3
    assert loss.item() == pytest.approx(want)
    assert stats["n_pairs"].item() == 3 and stats["margin"].item() == pytest.approx(4 / 3)


def test_ranking_loss_k4():
    # ranks in order; diffs (0,1) -.5, (0,2) .5, (0,3) 1.5, (1,2) 1, (1,3) 2, (2,3) 1
    loss, stats = _rl([0.5, 1.0, 0.0, -1.0], [0, 1, 2, 3])
    want = -(ls(-0.5) + ls(0.5) + ls(1.5) + ls(1.0) + ls(2.0) + ls(1.0)) / 6
    assert loss.item() == pytest.approx(want)
    assert stats["accuracy"].item() == pytest.approx(5 / 6)
    assert stats["margin"].item() == pytest.approx(5.5 / 6)
    # a permuted ranking: ranks [1,0,3,2] -> pairs (1,0) .5, (1,2) 1, (1,3) 2, (0,2) .5, (0,3) 1.5, (3,2) -1
    loss, _ = _rl([0.5, 1.0, 0.0, -1.0], [1, 0, 3, 2])
    want = -(ls(0.5) + ls(1.0) + ls(2.0) + ls(0.5) + ls(1.5) + ls(-1.0)) / 6
    assert loss.item() == pytest.approx(want)


def test_ranking_loss_tie_keeps_divisor():
    # ranks [0,0,1]: responses 0 and 1 tie, no pair between them; pairs (0,2): 2, (1,2): 1.
    # The divisor stays C(3,2) = 3, not 2.
    loss, stats = _rl([1.0, 0.0, -1.0], [0, 0, 1])
    assert loss.item() == pytest.approx(-(ls(2.0) + ls(1.0)) / 3)
    assert stats["n_pairs"].item() == 2
    loss, stats = _rl([1.0, 0.0, -1.0], [0, 0, 0])  # all tied: no pair, loss 0
    assert loss.item() == 0.0 and stats["n_pairs"].item() == 0


def test_ranking_loss_kwise_equals_mean_of_pairs():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, generator=g, dtype=torch.float64)
    ranks = torch.tensor([2, 0, 3, 1])
    kwise, _ = _rl(scores.tolist(), ranks.tolist())
    pairs = []
    for i, j in itertools.combinations(range(4), 2):
        w, l_ = (i, j) if ranks[i] < ranks[j] else (j, i)
        pairs.append([scores[w].item(), scores[l_].item()])
    pw, _ = ranking_loss(
        torch.tensor(pairs, dtype=torch.float64),
        torch.tensor([[0, 1]] * 6),
        torch.ones(6, 2, dtype=torch.bool),
    )
    assert kwise.item() == pytest.approx(pw.item())  # each pair weighted 1/C(4,2) = 1/6


def test_pair_preferences_by_hand():
    # labeler A: 0 > 1 = 2; labeler B: 1 > 0 > 2
    p = pair_preferences([[[0], [1, 2]], [[1], [0], [2]]], 3)
    assert p == [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]
    assert pair_preferences([[[1], [0]]], 2) == [[0.0, 0.0], [1.0, 0.0]]


def test_preference_loss_is_the_mean_of_the_labelers_ranking_losses():
    # the same K=3 responses ranked by two labelers: A says 0 > 1 = 2, B says 1 > 0 > 2
    s = [1.0, 0.0, -1.0]
    a = -(ls(1.0) + ls(2.0)) / 3  # pairs (0,1), (0,2); the tie forms none
    b = -(ls(-1.0) + ls(1.0) + ls(2.0)) / 3  # pairs (1,0), (1,2), (0,2)
    prefs = torch.tensor([pair_preferences([[[0], [1, 2]], [[1], [0], [2]]], 3)], dtype=torch.float64)
    loss, stats = preference_loss(torch.tensor([s], dtype=torch.float64), prefs, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((a + b) / 2)
    # accuracy against the labels: A's 2 pairs both right, B's (1,0) wrong and 2 right -> 4 of 5
    assert stats["n_pairs"].item() == pytest.approx(2.5) and stats["accuracy"].item() == pytest.approx(4 / 5)
    # with one labeler it is ranking_loss
    one = torch.tensor([pair_preferences([[[1], [0], [2]]], 3)], dtype=torch.float64)
    got, _ = preference_loss(torch.tensor([s], dtype=torch.float64), one, torch.ones(1, 3, dtype=torch.bool))
    want, _ = _rl(s, [1, 0, 2])
    assert got.item() == pytest.approx(want.item()) == pytest.approx(b)


def test_merged_items_weighed_by_their_rankings_equal_one_element_per_ranking():
    """Item 1 ranked by two labelers (A, B above), item 2 by one (C: 0 > 1 on scores [0, 2]). As three
    ranking records the batch loss is (a + b + c) / 3; merged into two items it must be the same, which
    weights 2 and 1 give and a plain mean over items ((a + b) / 2 + c) / 2 does not."""
    a = -(ls(1.0) + ls(2.0)) / 3
    b = -(ls(-1.0) + ls(1.0) + ls(2.0)) / 3
    c = -ls(-2.0)
    scores = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    prefs = torch.tensor([pair_preferences([[[0], [1, 2]], [[1], [0], [2]]], 3),
                          [[*row, 0.0] for row in pair_preferences([[[0], [1]]], 2)] + [[0.0] * 3]],
                         dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = preference_loss(scores, prefs, valid, torch.tensor([2.0, 1.0]))
    assert loss.item() == pytest.approx((a + b + c) / 3)
    plain, _ = preference_loss(scores, prefs, valid)
    assert plain.item() == pytest.approx(((a + b) / 2 + c) / 2)
    assert abs(plain.item() - loss.item()) > 1e-3


def test_ranking_loss_padding_ignored():
    nan = float("nan")
    scores = torch.tensor(
        [[1.0, 0.0, nan, nan], [1.0, 0.0, -1.0, 5.0], [3.0, nan, nan, nan]], requires_grad=True
    )
    ranks = torch.tensor([[0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    loss, stats = ranking_loss(scores, ranks, valid)
    # record 0 is K=2: -ls(1); record 1 is the K=3 example; record 2 has K=1 and is left out
    k3 = -(ls(1.0) + ls(2.0) + ls(1.0)) / 3
    assert loss.item() == pytest.approx((-ls(1.0) + k3) / 2, rel=1e-6)
    assert stats["n_pairs"].item() == 4
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad[~valid].abs().sum().item() == 0.0
    assert scores.grad[2].abs().sum().item() == 0.0


def test_ranks_from_groups():
    assert ranks_from_groups([[2], [0, 1], [3]], 4) == [1, 1, 0, 2]
    assert ranks_from_groups([[0], [1]], 2) == [0, 1]
    for bad, k in [([[0], [0, 1]], 2), ([[0]], 2), ([[0, 5]], 2), ([[0], [], [1]], 2)]:
        with pytest.raises(ValueError):
            ranks_from_groups(bad, k)


# --- PPO rewards and advantages ----------------------------------------------------------------------


def test_kl_penalized_rewards_2x3():
    logprobs = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    ref = t([-1.5, -1.0, -3.0], [-2.0, -0.5, -9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    scores = torch.tensor([10.0, 20.0], dtype=torch.float64)
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    # kl = lp - ref, 0 on padding: row 0 [.5, -1, 0], row 1 [1, -.5, 0 (8 masked)]
    close(kl, [[0.5, -1.0, 0.0], [1.0, -0.5, 0.0]])
    # rewards = -.1 * kl, score on the last real token: row 0 at t=2, row 1 at t=1
    close(rewards, [[-0.05, 0.1, 10.0], [-0.1, 20.05, 0.0]])


def test_kl_penalized_rewards_empty_row():
    rewards, kl = kl_penalized_rewards(
        torch.tensor([5.0, 1.0]),
        torch.zeros(2, 3),
        torch.ones(2, 3),
        torch.tensor([[0, 0, 0], [1, 0, 0]]),
        0.5,
    )
    # row 0 has no token: nothing anywhere; row 1: kl -1 at t=0 -> reward .5 + 1
    assert rewards.tolist() == [[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]]
    assert kl.tolist() == [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]


def test_gae_by_hand():
    rewards, values = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7])
    # gamma 1, lam .95; value after the last token is 0
    # t=2: delta = 1 - .7 = .3;        A2 = .3
    # t=1: delta = .7 - .6 = .1;       A1 = .1 + .95 * .3 = .385
    # t=0: delta = .6 - .5 = .1;       A0 = .1 + .95 * .385 = .46575
    want_adv, want_ret = [0.46575, 0.385, 0.3], [0.96575, 0.985, 1.0]
    for fn in (gae, gae_reference):
        adv, ret = fn(rewards, values, torch.ones(1, 3), 1.0, 0.95)
        assert adv[0].tolist() == pytest.approx(want_adv)
        assert ret[0].tolist() == pytest.approx(want_ret)
    # a padded 4th step with junk reward/value changes nothing and gets 0
    adv, ret = gae(t([0.0, 0.0, 1.0, 5.0]), t([0.5, 0.6, 0.7, 9.0]), t([1, 1, 1, 0]), 1.0, 0.95)
    assert adv[0].tolist() == pytest.approx(want_adv + [0.0])
    assert ret[0].tolist() == pytest.approx(want_ret + [0.0])


@pytest.mark.parametrize("left", [False, True])
def test_gae_fast_equals_reference(left):
    g = torch.Generator().manual_seed(2 + left)
    b, n = 7, 9
    rewards = torch.randn(b, n, generator=g, dtype=torch.float64)
    values = torch.randn(b, n, generator=g, dtype=torch.float64)
    lengths = torch.tensor([0, 1, n, 4, 5, 8, 2])
    mask = (torch.arange(n) < lengths.unsqueeze(1)).double()
    if left:
        mask = mask.flip(1)
    adv, ret = gae(rewards, values, mask, 0.99, 0.9)
    ref_adv, ref_ret = gae_reference(rewards, values, mask, 0.99, 0.9)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert adv[mask == 0].abs().sum().item() == 0.0 and adv[mask > 0].abs().sum().item() > 0


# --- PPO losses --------------------------------------------------------------------------------------


def test_ppo_policy_loss_clips_both_sides():
    c = 0.2
    ratio = [1.5, 0.5, 1.0, 1.5, 3.0]
    adv = t([1.0, -1.0, 2.0, -1.0, 100.0])
    mask = t([1, 1, 1, 1, 0])
    old = torch.zeros(1, 5, dtype=torch.float64)
    logprobs = torch.log(t(ratio)).requires_grad_(True)
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, c)
    # per token -min(rA, clip(r)A): 1) r 1.5 A+1: -min(1.5, 1.2) = -1.2 (upper clip binds)
    # 2) r .5 A-1: -min(-.5, -.8) = .8 (lower clip binds)  3) r 1 A 2: -2
    # 4) r 1.5 A-1: -min(-1.5, -1.2) = 1.5 (unclipped is worse, kept)  5) masked
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.0 + 1.5) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.0 + 1.5) / 4)
    k3 = (0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + 0.0 + (0.5 - math.log(1.5))
    assert stats["approx_kl"].item() == pytest.approx(k3 / 4)
    assert stats["policy_kl_k1"].item() == pytest.approx(-(2 * math.log(1.5) + math.log(0.5)) / 4)
    assert stats["policy_kl_k2"].item() == pytest.approx(
        0.5 * (2 * math.log(1.5) ** 2 + math.log(0.5) ** 2) / 4
    )
    loss.backward()
    # clipped tokens get no gradient; d/dlogp of -A r / 4 = -A r / 4 on the others
    assert logprobs.grad is not None
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, 0.0, -0.5, 0.375, 0.0])


def test_ppo_value_loss_by_hand():
    c = 0.2
    old = t([0.0, 0.0, 1.0, 0.0, 0.0])
    values = t([1.0, 0.1, 0.5, 1.0, 7.0])
    returns = t([1.0, 1.0, 0.0, -1.0, 0.0])
    mask = t([1, 1, 1, 1, 0])
    loss, stats = ppo_value_loss(values, old, returns, mask, c)
    # 1) (1-1)^2=0 vs clipped v=.2: .64 -> .64 (clip binds)   2) .81 vs .81 -> .81
    # 3) .25 vs clipped v=.8: .64 -> .64 (binds)              4) 4 vs clipped v=.2: 1.44 -> 4
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.64 + 4.0) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["error"].item() == pytest.approx((0.0 + 0.81 + 0.25 + 4.0) / 4)


# --- KL controllers ----------------------------------------------------------------------------------


def test_adaptive_kl_controller_updates_and_resumes():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)  # 9/6 - 1 = .5, clipped to .2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # 0.100512
    ctl.update(3.0, n_steps=256)  # 3/6 - 1 = -.5, clipped to -.2
    assert ctl.value == pytest.approx(0.100512 * (1 - 0.2 * 256 / 10000))
    v = ctl.value
    ctl.update(6.6, n_steps=100)  # .1, inside the clip
    assert ctl.value == pytest.approx(v * (1 + 0.1 * 100 / 10000))

    resumed = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    ctl.update(7.0, 64)
    resumed.update(7.0, 64)
    assert resumed.value == ctl.value != 0.1


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 256)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


# --- critic-free baselines ---------------------------------------------------------------------------


def test_rloo_and_grpo_two_groups():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 10.0], dtype=torch.float64)
    # group [1,2,3]: means of the others 2.5, 2, 1.5; group [4,4,10]: 7, 7, 4
    assert rloo_advantages(scores, 3).tolist() == pytest.approx([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    # group 1: mean 2, unbiased std sqrt((1+0+1)/2) = 1; group 2: mean 6, std sqrt((4+4+16)/2) = 2 sqrt 3
    r3 = math.sqrt(3.0)
    assert grpo_advantages(scores, 3, eps=0.0).tolist() == pytest.approx([-1, 0, 1, -1 / r3, -1 / r3, 2 / r3])
    assert grpo_advantages(scores, 3)[0].item() == pytest.approx(-1 / 1.0001)
    with pytest.raises(ValueError):
        rloo_advantages(scores, 4)


def test_kl_to_go_sums_the_kl_still_to_come_and_skips_padding():
    kl = t([0.5, 0.25, 0.125], [1.0, 2.0, 7.0])
    mask = t([1, 1, 1], [1, 1, 0])
    # row 0: .875 .375 .125; row 1: 3, 2, and 0 on the pad (its 7 never counts)
    close(kl_to_go(kl, mask), [[0.875, 0.375, 0.125], [3.0, 2.0, 0.0]])


def test_moving_baseline_is_an_exponential_average_not_a_cumulative_mean():
    b = MovingBaseline(decay=0.5)
    # batch 1 (mean 2): no history, centred on its own mean; baseline stays 2
    close(b.advantages(torch.tensor([1.0, 3.0])), [-1.0, 1.0])
    # batch 2 (mean 4): centred on 2, then 0.5 * 2 + 0.5 * 4 = 3
    close(b.advantages(torch.tensor([4.0, 4.0])), [2.0, 2.0])
    # batch 3 (mean 0): centred on 3 (a cumulative mean of the batches would be (2 + 4) / 2 = 3 too), then 1.5
    close(b.advantages(torch.tensor([0.0, 0.0])), [-3.0, -3.0])
    # batch 4: centred on 1.5; a cumulative mean would give (2 + 4 + 0) / 3 = 2
    close(b.advantages(torch.tensor([1.5, 1.5])), [0.0, 0.0])
    again = MovingBaseline(decay=0.1)
    again.load_state_dict(b.state_dict())
    assert again.state_dict() == b.state_dict() == {"decay": 0.5, "value": 1.5, "initialised": True}
    with pytest.raises(ValueError):
        MovingBaseline(decay=1.0)


# --- LM loss -----------------------------------------------------------------------------------------


def test_masked_lm_loss():
    # uniform logits over V=4: every target costs log 4
    labels = torch.tensor([[7, 1, -100, 2], [7, -100, 3, 0]])
    assert token_count(labels) == 4  # targets are columns 1..3: [1, 2] and [3, 0]
    assert masked_lm_loss(torch.zeros(2, 4, 4), labels.clamp_max(3)).item() == pytest.approx(math.log(4))

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[-100, 1, -100, 2], [0, -100, 3, 4]])
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert masked_lm_loss(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
    assert masked_lm_loss(logits, labels, reduction="sum").item() == pytest.approx(want.item() * 4, rel=1e-6)
    assert masked_lm_loss(logits, torch.full((2, 4), -100)).item() == 0.0  # no targets: 0, not NaN
