"""The one place ``tiller control`` makes a gymnasium environment: training, evaluation and rendering all build
the task the same way, from ``env`` and ``env_kwargs`` (so people are shown the body the policy acts in).

``env_kwargs`` are ``gym.make``'s keyword arguments. The reason they exist: Christiano et al. 2017 (Appendix
A.1) remove the locomotion tasks' termination conditions, because an episode that ends when the body falls
tells the policy about the reward through the episode's length, something a learned reward never sees;
gymnasium's Hopper and Walker2d take ``terminate_when_unhealthy=False`` for that (their healthy bonus is then
paid only while healthy, which the paper's penalty amounts to).

MuJoCo 3.3+ warns, through its own C callback, on every compile of gymnasium's HalfCheetah and Hopper XML
("compiler attribute 'settotalmass' is deprecated"): gymnasium's model files, not the user's, printed once
per env made (dozens per run). Deprecation notices are dropped; every other MuJoCo warning becomes a Python
``RuntimeWarning``, where filters and pytest can see it.
"""

from __future__ import annotations

import warnings
from typing import Any

from tiller.config import ConfigError

_quiet = False


def _mujoco_warning(message: str) -> None:
    if "deprecated" not in message:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


def _quiet_mujoco() -> None:
    global _quiet
    if _quiet:
        return
    try:
        import mujoco  # type: ignore[import-untyped]
    except ImportError:  # a non-MuJoCo gymnasium task
        return
    mujoco.set_mju_user_warning(_mujoco_warning)
    _quiet = True


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, **extra: Any) -> Any:
    """``gym.make(env_id, **env_kwargs, **extra)``; an unknown id or a keyword the task does not take is a
    ConfigError naming it (``extra``: what rendering adds, e.g. ``render_mode``)."""
    import gymnasium as gym

    _quiet_mujoco()
    kwargs = {**(env_kwargs or {}), **extra}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"env {env_id!r}: {e}") from None
    except TypeError as e:  # gym.make passes unknown keywords to the env's constructor
        given = ", ".join(f"{k}={v!r}" for k, v in (env_kwargs or {}).items()) or "none"
        raise ConfigError(f"env {env_id!r} with env_kwargs ({given}): {e}") from None


def check_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> tuple[int, int]:
    """(obs_dim, act_dim) of the task; a ConfigError for an unknown id or keyword, or for an observation or
    action space that is not a flat Box (the predictor is an MLP on obs|acts)."""
    import gymnasium as gym

    env = make_env(env_id, env_kwargs)
    try:
        obs, act = env.observation_space, env.action_space
        if not (isinstance(obs, gym.spaces.Box) and isinstance(act, gym.spaces.Box)
                and len(obs.shape) == 1 and len(act.shape) == 1):
            raise ConfigError(f"env {env_id!r}: tiller control needs flat Box observations and actions "
                              f"(continuous control), not {obs} and {act}")
        return int(obs.shape[0]), int(act.shape[0])
    finally:
        env.close()
