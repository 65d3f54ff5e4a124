"""tiller.control's core: segments, the oracle, the reward ensemble and query selection (issue #16).

The maths is checked against numbers worked out by hand; the ensemble learns on real MuJoCo clips (a random
HalfCheetah-v5 policy) and is judged on pairs of clips it never saw.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from tiller.control.oracle import oracle_preference
from tiller.control.predictor import (
    Comparison,
    PredictorConfig,
    RewardEnsemble,
    preference_accuracy,
    preference_loss,
    preference_nll,
    preference_probs,
    tuned_l2,
)
from tiller.control.queries import disagreement, label_schedule, select_queries
from tiller.control.segments import Segment, SegmentBuffer, cut, mujoco_state, set_mujoco_state

gym = pytest.importorskip("gymnasium")


@pytest.fixture(autouse=True)
def _mujoco_log_elsewhere(tmp_path, monkeypatch):
    """MuJoCo appends its warnings (HalfCheetah's deprecated settotalmass) to ./MUJOCO_LOG.TXT."""
    monkeypatch.chdir(tmp_path)


def seg(sid: str, obs, acts=None, rewards=None, states=None) -> Segment:
    obs = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    acts = np.zeros((len(obs), 1), np.float32) if acts is None else np.asarray(acts, np.float32)
    rewards = np.zeros(len(obs)) if rewards is None else np.asarray(rewards, dtype=np.float64)
    return Segment(sid, obs, acts, rewards, states, "Test-v0", 0)


# --- the preference model, by hand ---------------------------------------------------------------------


def test_preference_probs_and_loss_by_hand():
    # ret_a = 2, ret_b = 0, noise 0.1:
    #   sigmoid(2) = 1 / (1 + e^-2) = 1 / 1.1353353 = 0.8807971
    #   P(a) = 0.9 * 0.8807971 + 0.1 / 2 = 0.7927174 + 0.05 = 0.8427174
    #   mu = 1:   -ln 0.8427174 = 0.1711236
    #   mu = 0:   -ln (1 - 0.8427174) = -ln 0.1572826 = 1.8497109
    #   mu = 0.5: (0.1711236 + 1.8497109) / 2 = 1.0104173
    ra, rb = torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    mu = torch.tensor([1.0, 0.0, 0.5])
    assert preference_probs(ra, rb, 0.1).tolist() == pytest.approx([0.8427174] * 3, abs=1e-6)
    assert preference_nll(ra, rb, mu, 0.1).tolist() == pytest.approx([0.1711236, 1.8497109, 1.0104173], abs=1e-6)
    # the mean of the three: (0.1711236 + 1.8497109 + 1.0104173) / 3 = 1.0104173
    assert float(preference_loss(ra, rb, mu, 0.1)) == pytest.approx(1.0104173, abs=1e-6)
    # without noise: P = sigmoid(2); mu = 1 gives -ln 0.8807971 = 0.1269280
    assert float(preference_loss(ra[:1], rb[:1], mu[:1], 0.0)) == pytest.approx(0.1269280, abs=1e-6)
    # the noise floors P at 0.05: a confident wrong prediction (d = 100) costs -ln 0.05 = 2.9957323, and
    # without noise -ln sigmoid(-100) = 100 (finite: computed in log space)
    big, zero, wrong = torch.tensor([100.0]), torch.tensor([0.0]), torch.tensor([0.0])
    assert float(preference_loss(big, zero, wrong, 0.1)) == pytest.approx(2.9957323, abs=1e-5)
    assert float(preference_loss(big, zero, wrong, 0.0)) == pytest.approx(100.0, abs=1e-4)


def test_preference_accuracy_skips_ties():
    ra = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])
    rb = torch.tensor([1.0, 1.0, 0.0, 5.0, 1.0])
    mu = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.0])
    # pair 0 right (3 > 1, mu 1); pair 1 a tie in returns: skipped; pair 2 mu 0.5: skipped;
    # pair 3 wrong (2 < 5 but mu 1); pair 4 right (0 < 1, mu 0)
    assert preference_accuracy(ra, rb, mu) == (2, 3)


def test_oracle_prefers_larger_true_return():
    a = seg("a", [[0.0]] * 3, rewards=[1.0, 1.0, 1.0])  # return 3
    b = seg("b", [[0.0]] * 3, rewards=[0.5, 2.0, 0.4])  # return 2.9
    assert oracle_preference(a, b) == 1.0
    assert oracle_preference(b, a) == 0.0
    assert oracle_preference(a, a) == 0.5
    assert oracle_preference(a, b, tie_eps=0.1 + 1e-9) == 0.5  # |3 - 2.9| = 0.1 <= tie_eps
    assert oracle_preference(a, b, tie_eps=0.05) == 1.0


def test_l2_rule_by_hand():
    # val / train = 2.0 > 1.5: overfitting, l2 * 1.5; 1.0 < 1.1: l2 / 1.5; 1.3: unchanged
    assert tuned_l2(0.01, 0.6, 0.3, 1.5) == pytest.approx(0.015)
    assert tuned_l2(0.01, 0.3, 0.3, 1.5) == pytest.approx(0.01 / 1.5)
    assert tuned_l2(0.01, 0.39, 0.3, 1.5) == pytest.approx(0.01)


# --- disagreement and query selection on a hand-built ensemble -----------------------------------------


def linear_ensemble(slopes: list[float]) -> RewardEnsemble:
    """Member k's r(o, a) = slopes[k] * o[0]: no hidden layer, weights set by hand, inputs unnormalised."""
    ens = RewardEnsemble(obs_dim=1, act_dim=1, cfg=PredictorConfig(members=len(slopes), layers=0))
    with torch.no_grad():
        (w,), (b,) = ens.model.weights, ens.model.biases  # (K, 2, 1), (K, 1, 1)
        w.zero_()
        b.zero_()
        w[:, 0, 0] = torch.tensor(slopes)
    return ens


def test_disagreement_and_selection_by_hand():
    ens = linear_ensemble([1.0, 0.0, -1.0])
    z1, z2 = seg("z1", [[0.0], [0.0]]), seg("z2", [[1.0], [-1.0]])  # obs sums 0
    p2, p05, m4 = seg("p2", [[1.0], [1.0]]), seg("p05", [[0.5], [0.0]]), seg("m4", [[-3.0], [-1.0]])
    torch.testing.assert_close(ens.member_returns([p2, m4]), torch.tensor([[2.0, -4.0], [0.0, 0.0], [-2.0, 4.0]]))
    pairs = [(z1, z2), (p2, z1), (p05, z1), (m4, z2)]
    # ret_a - ret_b per member: d = (s, 0, -s) for s = 0, 2, 0.5, -4; P = sigmoid(d) (noise 0) has mean 0.5
    # and population variance 2 (sigmoid(s) - 0.5)^2 / 3:
    #   s = 0:   0
    #   s = 2:   sigmoid(2) = 0.8807971, 2 * 0.3807971^2 / 3 = 0.0966709
    #   s = 0.5: sigmoid(0.5) = 0.6224593, 2 * 0.1224593^2 / 3 = 0.0099975
    #   s = -4:  sigmoid(-4) = 0.0179862, 2 * 0.4820138^2 / 3 = 0.1548915
    var = disagreement(ens, pairs, label_noise=0.0)
    assert var.tolist() == pytest.approx([0.0, 0.0966709, 0.0099975, 0.1548915], abs=1e-6)
    # with noise 0.1 every P moves to 0.5 + 0.9 (P - 0.5): variances scale by 0.81
    assert disagreement(ens, pairs, label_noise=0.1).tolist() == pytest.approx((0.81 * var).tolist(), abs=1e-7)
    rng = np.random.default_rng(0)
    assert select_queries(ens, pairs, 2, "disagreement", rng) == [3, 1]
    assert select_queries(ens, pairs, 10, "disagreement", rng) == [3, 1, 2, 0]
    # the same two clips again (reversed, so the same variance): never asked twice in one call
    assert select_queries(ens, pairs + [(z1, p2)], 3, "disagreement", rng) == [3, 1, 2]
    # one member: no disagreement at all
    assert disagreement(linear_ensemble([1.0]), pairs, 0.1).tolist() == [0.0] * 4


def test_uniform_selection_is_seeded():
    ens = linear_ensemble([1.0, -1.0])
    pairs = [(seg(f"a{i}", [[float(i)]]), seg(f"b{i}", [[0.0]])) for i in range(20)]
    first = select_queries(ens, pairs, 5, "uniform", np.random.default_rng(7))
    assert first == select_queries(ens, pairs, 5, "uniform", np.random.default_rng(7))
    assert first != select_queries(ens, pairs, 5, "uniform", np.random.default_rng(8))
    assert len(set(first)) == 5 and all(0 <= i < 20 for i in first)
    assert sorted(select_queries(ens, pairs, 50, "uniform", np.random.default_rng(7))) == list(range(20))
    with pytest.raises(ValueError, match="query mode"):
        select_queries(ens, pairs, 5, "random", np.random.default_rng(7))


# --- the label schedule --------------------------------------------------------------------------------


def test_label_schedule_shape():
    f = label_schedule(total_labels=1000, total_steps=1_000_000, initial=250)
    ts = np.linspace(0, 1_000_000, 201).astype(int)
    labels = [f(int(t)) for t in ts]
    assert labels[0] == 250 and labels[-1] == 1000 and f(2_000_000) == 1000
    assert all(isinstance(n, int) for n in labels)
    assert all(b >= a for a, b in itertools.pairwise(labels))
    # the rate decreases: more labels arrive in the first tenth of training than in the last tenth
    first, last = f(100_000) - f(0), f(1_000_000) - f(900_000)
    assert first > 2 * last > 0
    # by hand (c = total_steps / 5 = 2e5): at t = c, 250 + floor(750 * ln 2 / ln 6)
    #   = 250 + floor(750 * 0.6931472 / 1.7917595) = 250 + floor(290.14) = 540
    assert f(200_000) == 540
    assert label_schedule(10, 100, 10)(50) == 10  # everything up front
    with pytest.raises(ValueError):
        label_schedule(10, 100, 11)


# --- segments, cut and the buffer -----------------------------------------------------------------------


def test_cut_fabricated_episode():
    n = 23
    obs = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    acts = -np.arange(n, dtype=np.float32).reshape(n, 1)
    rewards = np.arange(n, dtype=np.float64)
    states = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    segs = cut(obs, acts, rewards, states, length=5, env_id="Fake-v0", step=100, tag="run-ep7")
    # 23 steps -> 4 clips of 5, the last 3 steps dropped; the episode ended at global step 100, so clip i
    # (steps 5i..5i+4) ends at 100 - (23 - 5(i+1)) = 82, 87, 92, 97
    assert [s.id for s in segs] == ["run-ep7-0", "run-ep7-5", "run-ep7-10", "run-ep7-15"]
    assert [s.step for s in segs] == [82, 87, 92, 97]
    assert all(len(s) == 5 and s.env_id == "Fake-v0" for s in segs)
    np.testing.assert_array_equal(segs[2].obs, obs[10:15])
    np.testing.assert_array_equal(segs[2].acts, acts[10:15])
    np.testing.assert_array_equal(segs[3].true_rewards, [15, 16, 17, 18, 19])
    np.testing.assert_array_equal(segs[1].states, states[5:10])
    assert cut(obs[:4], acts[:4], rewards[:4], None, 5, "Fake-v0", 4, "short") == []
    with pytest.raises(ValueError, match="differ in length"):
        cut(obs, acts[:-1], rewards, None, 5, "Fake-v0", 100, "bad")


def test_buffer_bounded_pairs_distinct_and_state_round_trip(tmp_path):
    buf = SegmentBuffer(capacity=5, seed=3)
    for i in range(8):
        states = np.full((2, 3), float(i)) if i % 2 else None  # MuJoCo and not, side by side
        buf.add(seg(f"s{i}", [[float(i)], [i + 0.5]], rewards=[i, i], states=states))
    assert len(buf) == 5 and [s.id for s in buf] == ["s3", "s4", "s5", "s6", "s7"]  # oldest dropped
    # 10 pairs from 5 segments: every one of the C(5,2) = 10 pairs exactly once
    pairs = buf.sample_pairs(10)
    assert all(a.id != b.id for a, b in pairs)
    assert len({frozenset((a.id, b.id)) for a, b in pairs}) == 10
    assert len({frozenset((a.id, b.id)) for a, b in buf.sample_pairs(4)}) == 4  # the sparse path
    assert all(a.id != b.id for a, b in buf.sample_pairs(25))  # more than all pairs: repeats, never self
    # save with numpy (no pickles), load into a fresh buffer: same segments and the same next draws
    np.savez(tmp_path / "buf.npz", **buf.state_dict())
    other = SegmentBuffer(capacity=2, seed=99)
    with np.load(tmp_path / "buf.npz", allow_pickle=False) as d:
        other.load_state_dict(d)
    assert other.capacity == 5 and [s.id for s in other] == [s.id for s in buf]
    for s, t in zip(buf, other, strict=True):
        np.testing.assert_array_equal(s.obs, t.obs)
        np.testing.assert_array_equal(s.true_rewards, t.true_rewards)
        assert (s.states is None) == (t.states is None) and s.step == t.step and s.env_id == t.env_id
        if s.states is not None:
            np.testing.assert_array_equal(s.states, t.states)
    assert [(a.id, b.id) for a, b in other.sample_pairs(6)] == [(a.id, b.id) for a, b in buf.sample_pairs(6)]


def test_mujoco_states_replay_a_clip():
    """A clip's states put the simulator back where it was: replaying its actions gives its observations."""
    env = gym.make("HalfCheetah-v5")
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    o, a, r, s = [], [], [], []
    for _ in range(12):
        act = env.action_space.sample()
        o.append(obs)
        a.append(act)
        s.append(mujoco_state(env))
        obs, rew, *_ = env.step(act)
        r.append(rew)
    (clip,) = cut(np.array(o), np.array(a), np.array(r), np.array(s), 10, "HalfCheetah-v5", 12, "replay")
    assert clip.states is not None and clip.states.shape == (10, 9 + 9)  # nq + nv
    env.reset(seed=123)  # somewhere else entirely
    set_mujoco_state(env, clip.states[3])
    np.testing.assert_allclose(mujoco_state(env), clip.states[3])
    for t in range(3, 9):
        nxt, rew, *_ = env.step(clip.acts[t])
        np.testing.assert_allclose(nxt, clip.obs[t + 1], rtol=1e-5, atol=1e-5)
        assert rew == pytest.approx(clip.true_rewards[t], abs=1e-5)
    env.close()


# --- fitting ---------------------------------------------------------------------------------------------


def synthetic_comparisons(n_segs: int, n_pairs: int, seed: int, t: int = 8) -> list[Comparison]:
    """Clips of 4-d observations and 2-d actions with true r = o0 - 0.5 o1 + a0; oracle labels."""
    rng = np.random.default_rng(seed)
    segs = []
    for i in range(n_segs):
        obs = rng.normal(size=(t, 4)).astype(np.float32) + rng.normal(size=(1, 4)).astype(np.float32)
        acts = rng.uniform(-1, 1, size=(t, 2)).astype(np.float32)
        segs.append(seg(f"x{seed}-{i}", obs, acts, obs[:, 0] - 0.5 * obs[:, 1] + acts[:, 0]))
    out = []
    for _ in range(n_pairs):
        i, j = rng.choice(n_segs, size=2, replace=False)
        out.append(Comparison(segs[i], segs[j], oracle_preference(segs[i], segs[j])))
    return out


def test_fit_lowers_validation_loss():
    comps = synthetic_comparisons(120, 150, seed=0)
    untrained = RewardEnsemble(4, 2, PredictorConfig(seed=1, epochs=0, tune_l2=False)).fit(comps)
    ens = RewardEnsemble(4, 2, PredictorConfig(seed=1, epochs=20, lr=1e-3))
    trained = ens.fit(comps)
    # the same held-out split (same seed): 1/e of 150 is about 55
    assert untrained["fit/n_val"] == trained["fit/n_val"] and 35 <= trained["fit/n_val"] <= 75
    assert trained["fit/n_train"] + trained["fit/n_val"] == 150 and untrained["fit/steps"] == 0
    assert trained["loss/val"] < 0.6 * untrained["loss/val"]
    assert trained["val/accuracy"] > 0.85
    # fewer than min_val_labels comparisons: nothing held out, nothing to tune l2 by
    few = RewardEnsemble(4, 2, PredictorConfig(seed=1)).fit(comps[:9])
    assert few["fit/n_val"] == 0 and math.isnan(few["loss/val"]) and few["l2"] == pytest.approx(1e-3)


def test_l2_tuning_follows_the_loss_ratio():
    # Overfitting: 20 training comparisons, many epochs, no l2 to speak of -> val/train > 1.5 -> l2 up
    comps = synthetic_comparisons(40, 30, seed=2)
    ens = RewardEnsemble(4, 2, PredictorConfig(seed=0, epochs=150, lr=3e-3, l2=1e-6, hidden=64))
    m = ens.fit(comps)
    assert m["loss/val"] / m["loss/train"] > 1.5
    assert m["l2"] == pytest.approx(1.5e-6) and ens.l2 == pytest.approx([1.5e-6] * 3)
    # Over-regularised: l2 so large the members stay near constant -> val ~ train (ratio < 1.1) -> l2 down
    comps = synthetic_comparisons(120, 150, seed=3)
    ens = RewardEnsemble(4, 2, PredictorConfig(seed=0, epochs=5, l2=50.0))
    m = ens.fit(comps)
    assert m["loss/val"] / m["loss/train"] < 1.1
    assert m["l2"] == pytest.approx(50.0 / 1.5)
    ens.fit(comps)  # remembered from fit to fit: divided again
    assert ens.l2 == pytest.approx([50.0 / 1.5**2] * 3)


def test_state_dict_round_trip_and_normalised_reward(tmp_path):
    comps = synthetic_comparisons(60, 80, seed=4)
    ens = RewardEnsemble(4, 2, PredictorConfig(seed=0, epochs=3))
    ens.fit(comps)
    segs = [c.a for c in comps]
    ens.update_norm(segs)
    obs = np.concatenate([s.obs for s in segs])
    acts = np.concatenate([s.acts for s in segs])
    r = ens.reward(obs, acts)
    assert r.shape == (len(obs),) and r.dtype == np.float32
    assert float(r.mean()) == pytest.approx(0.0, abs=1e-4) and float(r.std()) == pytest.approx(1.0, abs=1e-4)
    # the one-step numpy path and the batched torch path agree
    np.testing.assert_allclose(np.concatenate([ens.reward(obs[i], acts[i]) for i in range(20)]), r[:20],
                               rtol=1e-4, atol=1e-5)
    torch.save(ens.state_dict(), tmp_path / "ens.pt")
    other = RewardEnsemble(4, 2, PredictorConfig(seed=0, epochs=3))
    other.load_state_dict(torch.load(tmp_path / "ens.pt", weights_only=True))
    np.testing.assert_allclose(other.reward(obs, acts), r, rtol=1e-6)
    assert other.l2 == ens.l2 and other.n_fits == 1
    # continuing from the checkpoint trains exactly as continuing the original would
    torch.manual_seed(0)
    m1 = ens.fit(comps)
    torch.manual_seed(0)
    m2 = other.fit(comps)
    assert m1["loss/train"] == pytest.approx(m2["loss/train"], rel=1e-5)
    with pytest.raises(ValueError, match="another shape"):
        RewardEnsemble(5, 2, PredictorConfig(seed=0, epochs=3)).load_state_dict(ens.state_dict())


# --- learning on MuJoCo clips ------------------------------------------------------------------------------


def random_policy_segments(env_id: str, steps: int, length: int, seed: int) -> list[list[Segment]]:
    """Clips of a uniformly random policy, one list per episode."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    episodes, g = [], 0
    while g < steps:
        obs, _ = env.reset(seed=seed + len(episodes))
        o, a, r, s = [], [], [], []
        done = False
        while not done and g < steps:
            act = env.action_space.sample()
            o.append(obs)
            a.append(act)
            s.append(mujoco_state(env))
            obs, rew, term, trunc, _ = env.step(act)
            r.append(rew)
            g += 1
            done = term or trunc
        episodes.append(cut(np.array(o), np.array(a), np.array(r), np.array(s), length, env_id, g,
                            f"{env_id}-{len(episodes)}"))
    env.close()
    return episodes


def oracle_pairs(segs: list[Segment], n: int, seed: int) -> list[Comparison]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(segs), size=2, replace=False)
        out.append(Comparison(segs[i], segs[j], oracle_preference(segs[i], segs[j])))
    return out


def held_out_accuracy(ens: RewardEnsemble, comps: list[Comparison]) -> float:
    ret_a = ens.member_returns([c.a for c in comps]).mean(0)
    ret_b = ens.member_returns([c.b for c in comps]).mean(0)
    right, counted = preference_accuracy(ret_a, ret_b, torch.tensor([c.mu for c in comps]))
    return right / counted


def test_ensemble_learns_halfcheetah_reward_from_oracle_labels():
    """300 oracle labels on random-policy clips; judged on 1000 pairs of clips from other episodes."""
    t0 = time.perf_counter()
    episodes = random_policy_segments("HalfCheetah-v5", steps=10_000, length=25, seed=0)  # 10 episodes
    train_segs = [s for ep in episodes[0::2] for s in ep]  # 200 clips from episodes 0, 2, ...
    test_segs = [s for ep in episodes[1::2] for s in ep]  # 200 clips the predictor never sees
    train, test = oracle_pairs(train_segs, 300, seed=1), oracle_pairs(test_segs, 1000, seed=2)
    ens = RewardEnsemble(17, 6, PredictorConfig(seed=0))
    chance = held_out_accuracy(ens, test)
    for _ in range(3):  # as the loop does when labels keep coming: each fit continues the last
        metrics = ens.fit(train)
    acc = held_out_accuracy(ens, test)
    ens.update_norm(train_segs)
    obs = np.concatenate([s.obs for s in test_segs])
    acts = np.concatenate([s.acts for s in test_segs])
    true = np.concatenate([s.true_rewards for s in test_segs])
    corr = float(np.corrcoef(ens.reward(obs, acts), true)[0, 1])
    print(f"\nHalfCheetah-v5: held-out pair accuracy {acc:.3f} (untrained {chance:.3f}), per-step correlation "
          f"with the true reward {corr:.3f}, val/accuracy {metrics['val/accuracy']:.3f}, "
          f"l2 {metrics['l2']:.2g}, {time.perf_counter() - t0:.1f} s")
    assert acc > 0.8
    assert corr > 0.4
