"""The environments PPO steps, and the wrapper that puts the learned reward between them and PPO.

Stack, bottom to top: ``DummyVecEnv`` (gymnasium envs in this process, so the wrapper can read each one's
MuJoCo state) -> ``VecMonitor`` (the TRUE episode return in ``info["episode"]``, for metrics only) ->
:class:`LearnedReward` (records clips, swaps the reward) -> optionally ``VecNormalize`` (the policy's
observation and reward scaling; the predictor keeps seeing raw observations). Christiano et al. 2017 sec. 2.1:
the policy optimises the predicted reward r_hat(o, a); the environment's reward reaches only the synthetic
oracle (through ``Segment.true_rewards``) and the metrics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from tiller.control.gym_env import make_env
from tiller.control.segments import Segment, SegmentBuffer, cut, mujoco_state


class RewardModel(Protocol):
    """What the wrapper needs of the predictor (``RewardEnsemble`` has it)."""

    def reward(self, obs: np.ndarray, acts: np.ndarray) -> np.ndarray: ...


def make_vec_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any] | None = None) -> VecMonitor:
    """``n_envs`` copies of the task in this process, seeded seed, seed+1, ... at their first reset."""
    venv = DummyVecEnv([partial(make_env, env_id, env_kwargs) for _ in range(n_envs)])
    venv.seed(seed)
    venv.action_space.seed(seed)
    return VecMonitor(venv)


@dataclass
class Episode:
    """A finished episode's returns: the env's (metrics only) and the one PPO was given."""

    true_return: float
    given_return: float
    length: int


class LearnedReward(VecEnvWrapper):
    """Records clips of every env into ``buffer`` and, with a ``reward_model``, REPLACES the reward PPO sees.

    Step t of env i is (obs_t, the action taken, the env's reward, the MuJoCo state at obs_t). Each time an
    env has ``length`` unrecorded steps of its current episode they become one Segment (so clips arrive
    while long episodes run); the remainder at an episode's end is dropped, a clip never spans a reset.
    With ``reward_model=None`` (the true-reward baseline, and the random-policy warm-up) the env's reward
    passes through. ``recent`` keeps the newest clips for the predictor's normalisation statistics.
    """

    def __init__(self, venv: VecEnv, buffer: SegmentBuffer, length: int, env_id: str,
                 reward_model: RewardModel | None = None, tag: str = "s0", recent: int = 200):
        super().__init__(venv)
        self.buffer, self.length, self.env_id, self.tag = buffer, length, env_id, tag
        self.reward_model = reward_model
        self.global_step = 0  # env steps so far (all envs), the clips' ``step``
        self.recent: deque[Segment] = deque(maxlen=recent)
        self.episodes: list[Episode] = []  # finished since the last ``drain_episodes``
        self._sims = venv.get_attr("unwrapped")  # the live envs under DummyVecEnv: their simulators
        n = self.num_envs
        self._stretch: list[list[tuple[np.ndarray, np.ndarray, float, np.ndarray | None]]] = [[] for _ in range(n)]
        self._episode, self._offset = [0] * n, [0] * n
        self._true_ret, self._given_ret, self._len = np.zeros(n), np.zeros(n), np.zeros(n, dtype=int)
        self._obs: np.ndarray | None = None
        self._acts: np.ndarray | None = None
        self._states: list[np.ndarray | None] = []

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._obs = np.asarray(obs, dtype=np.float32)
        for i in range(self.num_envs):
            self._new_episode(i)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._acts = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)
        self._states = [mujoco_state(s) for s in self._sims]  # before the step: the state at obs_t
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        assert self._obs is not None and self._acts is not None, "step before reset"
        self.global_step += self.num_envs
        if self.reward_model is not None:  # r_hat(o_t, a_t): what PPO trains on
            rewards = np.asarray(self.reward_model.reward(self._obs, self._acts), dtype=np.float32)
        else:
            rewards = np.asarray(true_rewards, dtype=np.float32)
        for i in range(self.num_envs):
            self._record(i, float(true_rewards[i]), float(rewards[i]))
            if dones[i]:
                infos[i]["given_episode"] = {"r": float(self._given_ret[i]), "l": int(self._len[i])}
                self.episodes.append(Episode(float(self._true_ret[i]), float(self._given_ret[i]), int(self._len[i])))
                self._new_episode(i)
        self._obs = np.asarray(obs, dtype=np.float32)  # after a done: the next episode's first observation
        return obs, rewards, dones, infos

    def _record(self, i: int, true_r: float, given_r: float) -> None:
        assert self._obs is not None and self._acts is not None
        self._stretch[i].append((self._obs[i].copy(), self._acts[i].copy(), true_r, self._states[i]))
        self._true_ret[i] += true_r
        self._given_ret[i] += given_r
        self._len[i] += 1
        if len(self._stretch[i]) == self.length:
            o, a, r, s = zip(*self._stretch[i], strict=True)
            states = None if s[0] is None else np.stack(s)  # type: ignore[arg-type]
            tag = f"{self.tag}-{i}-{self._episode[i]}-{self._offset[i]}"
            for seg in cut(np.stack(o), np.stack(a), np.array(r), states, self.length, self.env_id,
                           self.global_step, tag):
                self.buffer.add(seg)
                self.recent.append(seg)
            self._offset[i] += self.length
            self._stretch[i] = []

    def _new_episode(self, i: int) -> None:
        self._stretch[i] = []
        self._episode[i] += 1
        self._offset[i] = 0
        self._true_ret[i] = self._given_ret[i] = 0.0
        self._len[i] = 0

    def drain_episodes(self) -> list[Episode]:
        """The episodes finished since the last call."""
        out, self.episodes = self.episodes, []
        return out


def true_returns(env_id: str, episodes: int, seed: int, model: PPO | None = None,
                 norm: VecNormalize | None = None, env_kwargs: dict[str, Any] | None = None,
                 observe: Callable[[int, Any], None] | None = None) -> list[float]:
    """The env's return of ``episodes`` episodes: the deterministic policy's, or uniform random actions'.
    ``observe(episode, env)`` after every step, for what else an evaluation reads (scripts/control_posture.py:
    the body's pitch)."""
    env = make_env(env_id, env_kwargs)
    env.action_space.seed(seed)
    out = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            if model is None:
                act = env.action_space.sample()
            else:
                act, _ = model.predict(norm.normalize_obs(obs) if norm is not None else obs, deterministic=True)
            obs, r, terminated, truncated, _ = env.step(act)
            total, done = total + float(r), terminated or truncated
            if observe is not None:
                observe(ep, env)
        out.append(total)
    env.close()
    return out
