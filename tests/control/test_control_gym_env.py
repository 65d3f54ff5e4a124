"""``tiller.control.gym_env``: every env of a control run is made one way, with the run's ``env_kwargs``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

from tiller.config import ConfigError, load_config  # noqa: E402
from tiller.control.config import ControlConfig  # noqa: E402
from tiller.control.gym_env import check_env, make_env  # noqa: E402


def steps_alive(env_kwargs: dict | None, limit: int = 300) -> int:
    """Steps of uniform random actions until Hopper's episode ends (or ``limit``)."""
    env = make_env("Hopper-v5", env_kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    t, over = 0, False
    while t < limit and not over:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        t, over = t + 1, terminated or truncated
    env.close()
    return t


def test_env_kwargs_reach_the_env_as_the_paper_removes_termination() -> None:
    """A random Hopper falls within a few dozen steps and the episode ends; with the paper's setting
    (termination removed) it runs on, and the override parses from the command line."""
    assert steps_alive(None) < 100
    cfg = load_config(ControlConfig, None, ["env=Hopper-v5", "env_kwargs.terminate_when_unhealthy=false"])
    assert cfg.env_kwargs == {"terminate_when_unhealthy": False}
    assert steps_alive(cfg.env_kwargs) == 300
    assert check_env("Hopper-v5", cfg.env_kwargs) == (11, 3)


def test_unknown_env_or_keyword_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="'NoSuchEnv-v0'"):
        check_env("NoSuchEnv-v0")
    with pytest.raises(ConfigError, match=r"env 'Hopper-v5' with env_kwargs \(jump_higher=True\)"):
        check_env("Hopper-v5", {"jump_higher": True})
    with pytest.raises(ConfigError, match="Box"):
        check_env("CartPole-v1")  # discrete actions


def test_mujoco_deprecation_notices_are_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """MuJoCo 3.3+ prints a deprecation warning on every compile of gymnasium's own HalfCheetah XML: one per env
    made, dozens per run, none of them the user's to fix."""
    env = make_env("HalfCheetah-v5")
    obs, _ = env.reset(seed=0)
    env.close()
    assert np.isfinite(obs).all()
    assert "settotalmass" not in capfd.readouterr().err


def test_true_returns_shows_every_step_of_every_episode_to_observe() -> None:
    """``observe(episode, env)`` runs after each step of the evaluation, with the live env (the posture script
    reads the body's pitch there): the random Hopper's episodes end when it falls, so their lengths differ."""
    from tiller.control.envs import true_returns

    seen: dict[int, int] = {}

    def observe(episode: int, env: object) -> None:
        seen[episode] = seen.get(episode, 0) + 1
        assert hasattr(env, "unwrapped")

    returns = true_returns("Hopper-v5", 2, seed=0, observe=observe)
    assert len(returns) == 2 and sorted(seen) == [0, 1]
    assert all(0 < n < 100 for n in seen.values())  # each episode's steps, ending when the body fell
    assert true_returns("Hopper-v5", 2, seed=0) == returns  # observing changes nothing
