"""``tiller control run``: deep RL from human preferences (Christiano et al. 2017), PPO as the optimiser.

Three processes run asynchronously in the paper (sec. 2.2): the policy acts on the predicted reward, people
compare clips of its behaviour, the predictor is fitted to their comparisons. Here they interleave between
PPO's rollouts (an SB3 callback), and the policy never waits for people after the first fit:

  0. before RL: clips of a random policy, the initial labels on them (Appendix A), the first fit;
  1. rollout: PPO steps the envs; ``envs.LearnedReward`` records clips and swaps in r_hat(o, a);
  2. at each rollout's end: ask the labels ``queries.label_schedule`` says are due, chosen by ensemble
     disagreement among candidate pairs of recent clips; collect whatever answers have arrived;
  3. refit the predictor on all answers every ``refit_every`` steps, re-normalise its reward on recent clips;
  4. at a rollout's start (after PPO's update): a resumable checkpoint every ``checkpoint_every`` steps.

``reward: true`` is the baseline: the same PPO on the env's reward (clips still recorded, no labels).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from tiller.config import ConfigError
from tiller.control.config import ControlConfig
from tiller.control.envs import LearnedReward, make_vec_env, true_returns
from tiller.control.gym_env import check_env
from tiller.control.predictor import Comparison, RewardEnsemble
from tiller.control.queries import label_schedule, select_queries
from tiller.control.segments import SegmentBuffer
from tiller.control.sources import make_source
from tiller.control.store import load_buffer, load_comparisons, save_buffer, save_comparisons, save_segments
from tiller.runs import (
    LOOP_STATE,
    atomic_dir,
    clean_other_fingerprints,
    clean_stale,
    done_metrics,
    fingerprint,
    write_manifest,
)
from tiller.tracking import Tracker
from tiller.training import progress

# curve.json's row keys -> the tracker's metric names
METRICS = {"true_return": "charts/true_return", "predicted_return": "charts/predicted_return",
           "labels": "labels/used", "asked": "labels/asked", "sps": "charts/SPS",
           "val_accuracy": "predictor/val_accuracy", "train_accuracy": "predictor/train_accuracy",
           "l2": "predictor/l2", "loss_train": "loss/predictor_train", "loss_val": "loss/predictor_val"}


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


# ---------------------------------------------------------------------------------------------- the loop


class _Between(BaseCallback):
    """SB3 calls this around every rollout: the loop's steps 2-4 run here."""

    def __init__(self, loop: ControlLoop):
        super().__init__()
        self.loop = loop

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.loop.before_rollout(self.num_timesteps)

    def _on_rollout_end(self) -> None:
        self.loop.after_rollout(self.num_timesteps)


class ControlLoop:
    """One run's state: envs, clips, comparisons, the ensemble, PPO, the schedule position."""

    def __init__(self, cfg: ControlConfig, out: Path, ckpt: Path):
        self.cfg, self.out, self.ckpt = cfg, out, ckpt
        obs_dim, act_dim = check_env(cfg.env, cfg.env_kwargs)
        self.learned = cfg.reward == "learned"
        self.schedule = label_schedule(cfg.labels, cfg.total_steps, cfg.n_initial) if self.learned else None
        self.buffer = SegmentBuffer(cfg.buffer_segments, cfg.seed)
        self.ensemble = RewardEnsemble(obs_dim, act_dim, cfg.predictor) if self.learned else None
        self.source = make_source(cfg, out) if self.learned else None
        self.comparisons: list[Comparison] = []
        self.rng = np.random.default_rng(cfg.seed)
        self.state: dict[str, Any] = {"step": 0, "asked": 0, "fitted_on": 0, "last_fit": 0, "seconds": 0.0,
                                      "next_ckpt": cfg.checkpoint_every, "curve": [], "starts": [], "checkpoints": [],
                                      "fit": {}}
        self.tracker: Tracker | None = None
        self.bar: Any = None
        self._clock = (0, time.time())  # (step, time) of the last log row, for steps/s

    # -- setting up: fresh or from the checkpoint ----------------------------------------------------

    def _envs(self) -> VecEnv:
        """The env stack for this start; a resumed run's envs are seeded anew (new episodes, new clip ids)."""
        n = len(self.state["starts"])
        base = make_vec_env(self.cfg.env, self.cfg.n_envs, self.cfg.seed + 1_000 * n, self.cfg.env_kwargs)
        self.wrapper = LearnedReward(base, self.buffer, self.cfg.segment_length, self.cfg.env, tag=f"r{n}")
        p = self.cfg.ppo
        self.norm = (VecNormalize(self.wrapper, norm_obs=p.normalize_obs, norm_reward=p.normalize_reward,
                                  gamma=p.gamma) if p.normalize_obs or p.normalize_reward else None)
        return self.norm or self.wrapper

    def start(self) -> None:
        """Step 0: the random policy's true return, its clips, the initial labels and the first fit."""
        cfg = self.cfg
        self.state["random_returns"] = true_returns(cfg.env, cfg.eval_episodes, cfg.seed + 10_000,
                                                   env_kwargs=cfg.env_kwargs)
        top = self._envs()
        if self.learned:
            self._random_clips(top)
            self._ask(cfg.n_initial, "uniform")  # an untrained ensemble has nothing to disagree about
            self._wait_first()
            self._log(0, self._fit(0))
        p = cfg.ppo
        self.model = PPO("MlpPolicy", top, n_steps=p.n_steps, batch_size=p.batch_size, n_epochs=p.n_epochs,
                         learning_rate=p.learning_rate, gamma=p.gamma, gae_lambda=p.gae_lambda,
                         clip_range=p.clip_range, ent_coef=p.ent_coef, vf_coef=p.vf_coef,
                         max_grad_norm=p.max_grad_norm, use_sde=p.use_sde, seed=cfg.seed, device=p.device,
                         policy_kwargs={"net_arch": list(p.net_arch), "log_std_init": p.log_std_init})
        self._begin()

    def restore(self) -> bool:
        """Load the last checkpoint, if any: PPO, VecNormalize, the ensemble, clips, comparisons, loop state."""
        if not (self.ckpt / LOOP_STATE).is_file():
            return False
        self.state = json.loads((self.ckpt / LOOP_STATE).read_text())
        self.rng.bit_generator.state = self.state.pop("rng")
        load_buffer(self.ckpt / "buffer.npz", self.buffer)
        if self.ensemble is not None:
            self.ensemble.load_state_dict(torch.load(self.ckpt / "predictor.pt", weights_only=True))
            self.comparisons = load_comparisons(self.ckpt / "comparisons.npz")
            if "source" in self.state:
                getattr(self.source, "load_state_dict")(self.state["source"])  # noqa: B009
        top = self._envs()
        if self.norm is not None:
            self.norm = VecNormalize.load(str(self.ckpt / "vecnormalize.pkl"), self.wrapper)
            top = self.norm
        self.model = PPO.load(self.ckpt / "ppo.zip", env=top, device=self.cfg.ppo.device)
        self.model._last_obs = None  # type: ignore[assignment]  # the saved envs are gone: learn() resets these
        self._begin()
        return True

    def _begin(self) -> None:
        self.wrapper.reward_model = self.ensemble
        self.wrapper.global_step = self.model.num_timesteps
        self.state["starts"].append({"step": self.model.num_timesteps, "labels": len(self.comparisons)})
        self._clock = (self.model.num_timesteps, time.time())
        self._t0 = time.time() - self.state["seconds"]

    def _random_clips(self, top: VecEnv) -> None:
        """Uniform random actions until the buffer holds enough clips for the initial queries."""
        cfg = self.cfg
        need = min(cfg.buffer_segments, max(2 * cfg.n_initial, 10))
        limit = 100 * need * cfg.segment_length
        top.reset()
        while len(self.buffer) < need:
            if self.wrapper.global_step > limit:
                raise ConfigError(f"{cfg.env}: random episodes rarely last segment_length={cfg.segment_length} "
                                  f"steps ({len(self.buffer)} clips in {limit} steps); use shorter clips")
            top.step(np.stack([top.action_space.sample() for _ in range(top.num_envs)]))

    # -- the steps between rollouts ------------------------------------------------------------------

    def _ask(self, k: int, mode: str) -> None:
        if k <= 0 or len(self.buffer) < 2 or self.ensemble is None or self.source is None:
            return
        n = k * (self.cfg.candidates_per_query if mode == "disagreement" else 1)
        candidates = self.buffer.sample_pairs(n)
        chosen = [candidates[i] for i in select_queries(self.ensemble, candidates, k, mode, self.rng)]
        self.source.ask(chosen)
        self.state["asked"] += len(chosen)

    def _collect(self) -> None:
        if self.source is not None:
            self.comparisons += self.source.collect()

    def _wait_first(self) -> None:
        """The one wait for people: enough answers for the first fit (the oracle's are there at once)."""
        app = self.cfg.app
        need = min(self.state["asked"], app.min_first or self.cfg.n_initial)
        deadline = None if app.timeout is None else time.time() + app.timeout
        self._collect()
        while len(self.comparisons) < max(need, 1):
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"{len(self.comparisons)} of the {need} first comparisons came within "
                                   f"{app.timeout:g} s")
            time.sleep(app.poll)
            self._collect()

    def _fit(self, step: int) -> dict[str, float]:
        assert self.ensemble is not None
        metrics = self.ensemble.fit(self.comparisons)
        recent = list(self.wrapper.recent) or list(self.buffer)
        self.ensemble.update_norm(recent)  # zero mean, unit std on recent behaviour (sec. 2.2.1)
        self.state.update(last_fit=step, fitted_on=len(self.comparisons), fit=metrics)
        return metrics

    def before_rollout(self, step: int) -> None:
        every = self.cfg.checkpoint_every
        if every and step >= self.state["next_ckpt"] and step < self.cfg.total_steps:
            self.state["next_ckpt"] = (step // every + 1) * every
            self.state["checkpoints"].append(step)
            self.save_checkpoint()

    def after_rollout(self, step: int) -> None:
        cfg, st = self.cfg, self.state
        st["step"] = step
        fit: dict[str, float] = {}
        if self.schedule is not None:
            if cfg.source != "app" or step < cfg.total_steps:  # people cannot answer after the last collect
                self._ask(self.schedule(step) - st["asked"], cfg.queries)  # 2. labels due by now
            self._collect()
            fresh = len(self.comparisons) > st["fitted_on"]
            if fresh and (step - st["last_fit"] >= cfg.refit_every or step >= cfg.total_steps):
                fit = self._fit(step)  # 3. refit and re-normalise
        self._log(step, fit)

    def _log(self, step: int, fit: dict[str, float]) -> None:
        episodes = self.wrapper.drain_episodes()
        (t0, c0), now = self._clock, time.time()
        self._clock = (step, now)
        row: dict[str, Any] = {"step": step, "labels": len(self.comparisons), "asked": self.state["asked"]}
        if step > t0:
            row["sps"] = (step - t0) / max(now - c0, 1e-9)
        if episodes:
            row["true_return"] = float(np.mean([e.true_return for e in episodes]))
            row["episodes"] = len(episodes)
            if self.learned:
                row["predicted_return"] = float(np.mean([e.given_return for e in episodes]))
        if fit:
            row.update(val_accuracy=fit["val/accuracy"], train_accuracy=fit["train/accuracy"], l2=fit["l2"],
                       loss_train=fit["loss/train"], loss_val=fit["loss/val"])
        self.state["curve"].append({k: _finite(v) for k, v in row.items()})
        if self.tracker is not None:
            self.tracker.log({METRICS[k]: v for k, v in row.items() if k in METRICS}, step)
        if self.bar is not None:
            self.bar.update(min(step, self.cfg.total_steps) - self.bar.n)
            self.bar.set_postfix(ret=f"{row.get('true_return', float('nan')):.0f}", labels=row["labels"])

    # -- checkpoints, training, the result -----------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        self.model.save(folder / "ppo.zip")
        if self.norm is not None:
            self.norm.save(str(folder / "vecnormalize.pkl"))
        if self.ensemble is not None:
            torch.save(self.ensemble.state_dict(), folder / "predictor.pt")
            save_comparisons(folder / "comparisons.npz", self.comparisons)

    def save_checkpoint(self) -> None:
        """Everything a rerun needs to continue, written to a temporary folder and renamed into place."""
        self.state["seconds"] = time.time() - self._t0
        state = {**self.state, "rng": self.rng.bit_generator.state}
        if hasattr(self.source, "state_dict"):
            state["source"] = getattr(self.source, "state_dict")()  # noqa: B009  # optional in the protocol
        with atomic_dir(self.ckpt) as tmp:
            self._save_state(tmp)
            save_buffer(tmp / "buffer.npz", self.buffer)
            (tmp / LOOP_STATE).write_text(json.dumps(state))

    def train(self) -> None:
        remaining = self.cfg.total_steps - self.model.num_timesteps
        if remaining > 0:
            self.model.learn(remaining, callback=_Between(self), reset_num_timesteps=False)

    def finish(self, out: Path, fp: str) -> dict[str, Any]:
        """Evaluate the final policy on the true reward and write the run folder with its manifest."""
        cfg, st = self.cfg, self.state
        final = true_returns(cfg.env, cfg.eval_episodes, cfg.seed + 10_000, self.model, self.norm, cfg.env_kwargs)
        fit = st.get("fit", {})
        metrics: dict[str, Any] = {
            "eval/true_return": float(np.mean(final)) if final else math.nan,
            "eval/true_return_std": float(np.std(final)) if final else math.nan,
            "eval/random_return": float(np.mean(st["random_returns"])) if st.get("random_returns") else math.nan,
            "labels/used": len(self.comparisons), "labels/asked": st["asked"], "steps": self.model.num_timesteps,
            "predictor/val_accuracy": fit.get("val/accuracy", math.nan), "seconds": time.time() - self._t0,
            "starts": len(st["starts"]),
        }
        with atomic_dir(out) as tmp:
            self._save_state(tmp)
            late = list(self.buffer)[-4:]
            early = [c.a for c in self.comparisons[:4]]
            save_segments(tmp / "clips.npz", early + late, early=np.array(len(early)))
            curve = {"env": cfg.env, "env_kwargs": cfg.env_kwargs, "reward": cfg.reward, "curve": st["curve"],
                     "starts": st["starts"], "checkpoints": st["checkpoints"],
                     "eval": {"final": final, "random": st.get("random_returns", [])},
                     "metrics": {k: _finite(v) for k, v in metrics.items()}}
            (tmp / "curve.json").write_text(json.dumps(curve, indent=1))
            write_manifest(tmp, stage="control", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                           starts=st["starts"])
        return metrics


def train_control(cfg: ControlConfig, out: Path, force: bool = False, log_dir: Path | None = None) -> dict:
    """Run (or resume) the loop; writes ``out`` (PPO, VecNormalize, predictor, comparisons, curve, manifest).

    A checkpoint lives beside ``out`` in ``.{out.name}.ckpt-{fingerprint}`` while the run goes, so a rerun
    after a kill continues from it; a finished run with the same config is not redone unless ``force``."""
    out = Path(out)
    log_dir = Path(log_dir) if log_dir is not None else out.parent / "logs"
    check_env(cfg.env, cfg.env_kwargs)  # an unknown env or keyword fails before anything is written
    fp = fingerprint("control", cfg, {})
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    clean_other_fingerprints(out, ("ckpt",), fp)
    ckpt = out.with_name(f".{out.name}.ckpt-{fp}")
    if force:
        shutil.rmtree(ckpt, ignore_errors=True)
    loop = ControlLoop(cfg, out, ckpt)
    try:
        with Tracker(log_dir, "control", cfg.report_to) as tracker:
            loop.tracker = tracker
            if not loop.restore():
                loop.start()
            loop.bar = progress(cfg.total_steps, f"control {cfg.env} ({cfg.reward} reward)")
            loop.bar.update(min(loop.model.num_timesteps, cfg.total_steps))
            loop.train()
            loop.bar.close()
        metrics = loop.finish(out, fp)
    finally:
        close = getattr(loop.source, "close", None)  # the app source's database engine
        if close is not None:
            close()
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics
