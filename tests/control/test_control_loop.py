"""tiller.control's loop: the learned reward really replaces the env's in what PPO trains on, clips are cut
with their simulator states, the label schedule is followed exactly, a killed run resumes from its checkpoint,
and (slow) a policy trained on the learned reward beats the random policy on the true return."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from tiller.config import ConfigError, from_dict, load_config  # noqa: E402
from tiller.control.config import ControlConfig  # noqa: E402
from tiller.control.envs import LearnedReward, make_vec_env  # noqa: E402
from tiller.control.loop import train_control  # noqa: E402
from tiller.control.predictor import PredictorConfig, RewardEnsemble  # noqa: E402
from tiller.control.queries import label_schedule  # noqa: E402
from tiller.control.segments import SegmentBuffer, cut  # noqa: E402
from tiller.control.store import load_buffer, load_comparisons, save_buffer  # noqa: E402
from tiller.runs import LOOP_STATE, read_manifest  # noqa: E402
from tiller.tracking import read_metrics  # noqa: E402

CHEETAH = "HalfCheetah-v5"  # obs = qpos[1:] (8) | qvel (9); no termination, so every clip is full length
# A short run: 2 envs x 256 steps a rollout, 2 PPO epochs, a small predictor.
SHORT = dict(env=CHEETAH, total_steps=3072, labels=20, initial_labels=8, segment_length=10, n_envs=2,
             refit_every=500, checkpoint_every=1024, eval_episodes=1, report_to=[],
             ppo=dict(n_steps=256, n_epochs=2), predictor=dict(epochs=3, members=2))


class _Snapshot(BaseCallback):
    """A copy of the rollout buffer at the rollout's end, as PPO is about to train on it (train() then
    flattens the buffer's arrays in place)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        rb = self.model.rollout_buffer
        self.buffer = SimpleNamespace(observations=rb.observations.copy(), actions=rb.actions.copy(),
                                      rewards=rb.rewards.copy())


def _rollout(model: PPO, steps: int) -> SimpleNamespace:
    snap = _Snapshot()
    model.learn(steps, callback=snap)
    return snap.buffer


def test_wrapper_replaces_rewards_and_records_clips_with_states():
    """PPO's rollout buffer holds r_hat(obs, clipped action) for every step, never the env's reward; every
    clip has `length` steps, and its MuJoCo state at step t is the one obs[t] was read from."""
    ens = RewardEnsemble(17, 6, PredictorConfig(members=2, seed=1))
    buf = SegmentBuffer(100, seed=0)
    env = LearnedReward(make_vec_env(CHEETAH, 2, seed=0), buf, 5, CHEETAH, reward_model=ens)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    rb = _rollout(model, 64)  # one rollout of 32 steps x 2 envs
    space = env.action_space
    acts = np.clip(rb.actions, space.low, space.high)  # (32, 2, 6): the buffer keeps the unclipped sample
    expected = ens.reward(rb.observations.reshape(-1, 17), acts.reshape(-1, 6)).reshape(32, 2)
    np.testing.assert_allclose(rb.rewards, expected, rtol=1e-5, atol=1e-6)

    clips = list(buf)
    assert len(clips) == 2 * (32 // 5)  # 6 clips per env, the last 2 steps not yet a clip
    assert len({c.id for c in clips}) == len(clips)
    true_in_buffer = 0
    for c in clips:
        assert c.obs.shape == (5, 17) and c.acts.shape == (5, 6) and c.states.shape == (5, 18)
        np.testing.assert_allclose(c.obs[:, :8], c.states[:, 1:9], atol=1e-5)  # qpos without the x position
        np.testing.assert_allclose(c.obs[:, 8:], c.states[:, 9:], atol=1e-5)  # qvel
        # where this clip's steps sit in the rollout buffer: the same observations, learned rewards there
        t, i = np.argwhere(np.all(np.isclose(rb.observations, c.obs[0], atol=1e-6), axis=-1))[0]
        np.testing.assert_allclose(rb.observations[t:t + 5, i], c.obs, atol=1e-6)
        np.testing.assert_allclose(rb.rewards[t:t + 5, i], ens.reward(c.obs, c.acts), rtol=1e-5, atol=1e-6)
        true_in_buffer += int(np.isclose(rb.rewards[t:t + 5, i], c.true_rewards, atol=1e-3).sum())
    assert true_in_buffer == 0


def test_true_reward_baseline_passes_env_reward_and_still_records():
    buf = SegmentBuffer(100, seed=0)
    env = LearnedReward(make_vec_env(CHEETAH, 1, seed=0), buf, 8, CHEETAH)
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    rb = _rollout(model, 16)
    (clip, other) = list(buf)
    np.testing.assert_allclose(rb.rewards[:8, 0], clip.true_rewards, rtol=1e-5)
    np.testing.assert_allclose(rb.rewards[8:, 0], other.true_rewards, rtol=1e-5)
    assert other.step == 16 and clip.step == 8


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, dict]:
    """``RUN/control`` of the short learned-reward run with the oracle, and its metrics."""
    out = tmp_path_factory.mktemp("short") / "learned" / "control"
    return out, train_control(from_dict(ControlConfig, SHORT), out)


def test_short_loop_follows_the_label_schedule(short_run):
    """End to end with the oracle: labels asked at each rollout are exactly the schedule's, all of them by the
    end; checkpoints at 1024 and 2048 steps; metrics in logs/metrics.jsonl; a manifest; a rerun is skipped."""
    cfg = from_dict(ControlConfig, SHORT)
    out, m = short_run
    schedule = label_schedule(20, 3072, 8)
    assert m["labels/used"] == m["labels/asked"] == 20 and m["steps"] == 3072
    curve = json.loads((out / "curve.json").read_text())
    assert [r["step"] for r in curve["curve"]] == [0, 512, 1024, 1536, 2048, 2560, 3072]  # 0: the first fit
    assert [r["asked"] for r in curve["curve"]] == [schedule(r["step"]) for r in curve["curve"]] == [
        8, 12, 14, 16, 17, 18, 20]  # 8 + floor(12 * log(1 + t / 614.4) / log 6), worked by hand
    assert curve["checkpoints"] == [1024, 2048]
    assert not list(out.parent.glob(".control.ckpt-*"))  # removed once the run is done
    comps = load_comparisons(out / "comparisons.npz")
    assert len(comps) == 20 and all(c.mu in (0.0, 0.5, 1.0) for c in comps)
    assert all(c.mu == (1.0 if c.a.true_rewards.sum() > c.b.true_rewards.sum() else 0.0) for c in comps)
    rows = read_metrics(out.parent / "logs", "control")
    assert [r["labels/used"] for r in rows] == [8, 12, 14, 16, 17, 18, 20]
    assert all("charts/SPS" in r for r in rows[1:]) and any("charts/true_return" in r for r in rows)
    assert any(np.isfinite(r.get("predictor/val_accuracy", np.nan)) for r in rows)
    manifest = read_manifest(out)
    assert manifest["stage"] == "control" and manifest["config"]["labels"] == 20
    for f in ("ppo.zip", "vecnormalize.pkl", "predictor.pt", "clips.npz"):
        assert (out / f).is_file()
    assert train_control(cfg, out) == json.loads(json.dumps(manifest["metrics"]))  # done: not redone


def test_report_beside_the_true_reward_baseline(short_run, tmp_path):
    """The page has both runs in its table, the three plots, and clip strips or the reason there are none."""
    from tiller.control.report import write_report

    learned = short_run[0].parent
    baseline = tmp_path / "true"
    m = train_control(from_dict(ControlConfig, {**SHORT, "reward": "true", "total_steps": 1024}),
                      baseline / "control")
    assert m["labels/used"] == 0 and not (baseline / "control" / "comparisons.npz").exists()
    page = write_report([learned, baseline], tmp_path / "report")
    html = page.read_text()
    assert "learned (learned reward)" not in html and "<td>learned</td>" in html and "<td>true</td>" in html
    for png in ("return-steps.png", "return-labels.png", "accuracy-labels.png"):
        assert (page.parent / png).is_file() and png in html
    strips = sorted(page.parent.glob("clip-*.png"))
    # learned: 2 random-policy clips (labelled first) + 2 final ones; the baseline asked no labels: 2 final ones
    assert len(strips) == 6 or "clip thumbnails not rendered" in html
    assert "true return" in html


def test_buffer_checkpoint_round_trip(tmp_path):
    """A saved and reloaded buffer holds the same clips and draws the same pairs next (its RNG state too)."""
    buf = SegmentBuffer(6, seed=3)
    for i in range(8):  # the first two fall out
        s = i * np.ones((4, 1))
        buf.add(cut(s, s[:, :1] * 2, s[:, 0], s * 3, 4, "E-v0", 4 * (i + 1), f"c{i}")[0])
    buf.sample_pairs(2)
    save_buffer(tmp_path / "b.npz", buf)
    again = SegmentBuffer(6, seed=99)
    load_buffer(tmp_path / "b.npz", again)
    assert [s.id for s in again] == [f"c{i}-0" for i in range(2, 8)] and [s.step for s in again] == [12, 16, 20,
                                                                                                   24, 28, 32]
    np.testing.assert_array_equal(list(again)[0].states, 6 * np.ones((4, 1)))
    assert [(a.id, b.id) for a, b in again.sample_pairs(5)] == [(a.id, b.id) for a, b in buf.sample_pairs(5)]


def test_bad_config_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="initial_labels"):
        load_config(ControlConfig, None, ["labels=10", "initial_labels=20"])
    with pytest.raises(ConfigError, match="queries"):
        load_config(ControlConfig, None, ["queries=best"])
    cfg = from_dict(ControlConfig, {**SHORT, "env": "NoSuchEnv-v0"})
    with pytest.raises(ConfigError, match="NoSuchEnv"):
        train_control(cfg, tmp_path / "run" / "control")
    assert not (tmp_path / "run").exists()


RESUME = {**SHORT, "total_steps": 6144, "labels": 30, "checkpoint_every": 1024}


@pytest.mark.slow  # ~20 s: a child process started, killed and resumed
def test_resume_after_sigkill(tmp_path):
    """Killed with SIGKILL after its first checkpoint, a rerun continues from it: steps and labels go on from
    the checkpoint's, the curve never restarts, and the run finishes with exactly the scheduled labels."""
    out = tmp_path / "run" / "control"
    script = ("import sys, pathlib; from tiller.config import from_dict; from tiller.control.config import "
              "ControlConfig; from tiller.control.loop import train_control; import json; "
              f"train_control(from_dict(ControlConfig, json.loads(sys.argv[1])), pathlib.Path({str(out)!r}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(RESUME)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    state = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(out.parent.glob(".control.ckpt-*"))
        if ckpts and (ckpts[0] / LOOP_STATE).is_file():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(30) == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    state = json.loads((ckpts[0] / LOOP_STATE).read_text())
    assert state["step"] >= 1024 and state["asked"] > RESUME["initial_labels"]
    assert read_manifest(out) is None  # not finished

    m = train_control(from_dict(ControlConfig, RESUME), out)
    curve = json.loads((out / "curve.json").read_text())
    first, second = curve["starts"]
    assert first == {"step": 0, "labels": 8} and curve["curve"][0]["step"] == 0
    assert second == {"step": state["step"], "labels": state["asked"]} and state["step"] in curve["checkpoints"]
    steps = [r["step"] for r in curve["curve"]]
    assert steps == list(range(0, 6144 + 1, 512))  # the first fit, then every rollout once: none redone or lost
    assert m["labels/used"] == 30 and m["steps"] == 6144 and m["starts"] == 2
    assert [r["asked"] for r in curve["curve"]] == [label_schedule(30, 6144, 8)(s) for s in steps]
    assert len(load_comparisons(out / "comparisons.npz")) == 30


@pytest.mark.slow  # ~1-2 min on one core
def test_learned_reward_policy_beats_random_on_true_return(tmp_path, capsys):
    """HalfCheetah, 50k PPO steps on a reward learned from 150 oracle comparisons: the TRUE return of the
    final deterministic policy is well above the random policy's, the training episodes' true return rises,
    and the predictor ranks held-out pairs far better than chance. Measured here (seed 0, 2-core CPU): eval
    -162 against random -249; training episodes -403 at 4k steps, -67 at 49k; held-out accuracy 0.96."""
    cfg = from_dict(ControlConfig, dict(env=CHEETAH, total_steps=50_000, labels=150, refit_every=4096,
                                        checkpoint_every=0, eval_episodes=3, report_to=[]))
    m = train_control(cfg, tmp_path / "run" / "control")
    curve = json.loads((tmp_path / "run" / "control" / "curve.json").read_text())["curve"]
    returns = [r["true_return"] for r in curve if r.get("true_return") is not None]
    with capsys.disabled():
        print(f"\nfinal {m['eval/true_return']:.1f} random {m['eval/random_return']:.1f} training episodes "
              f"{returns[0]:.0f} -> {returns[-1]:.0f} held-out acc {m['predictor/val_accuracy']:.2f} "
              f"{m['seconds']:.0f} s")
    assert m["labels/used"] == 150
    assert m["eval/true_return"] > m["eval/random_return"] + 50
    # rising, without a margin: about 50 training episodes of 1,000 steps, and the first ones are noisy (one CI
    # run on a loaded machine: -347 -> -269, where this machine measured -403 -> -67)
    assert np.mean(returns[-3:]) > np.mean(returns[:3])
    assert m["predictor/val_accuracy"] > 0.8
