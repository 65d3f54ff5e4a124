"""How much of an episode a finished HalfCheetah control run's policy spends on its back.

PPO on HalfCheetah has a well-known local optimum: the cheetah flips over and runs on its back, at about half
the return of an upright gait. docs/control.md uses this to read the spread of final returns over seeds.
For each run: its final evaluation again (``envs.true_returns``: the run's env, seed and episodes, so the
returns are the ones in its curve.json), and per episode the share of steps whose torso pitch (qpos[2],
rooty) is beyond 90 degrees.

    python scripts/control_posture.py runs/control-measure/learned-s0 runs/control-measure/true-s0 ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from tiller.control.envs import true_returns
from tiller.control.gym_env import make_env
from tiller.runs import read_manifest


def posture(run: Path) -> tuple[list[float], list[float]]:
    """Per evaluation episode of the run's final deterministic policy: (true returns, shares of steps upside
    down)."""
    folder = run / "control"
    manifest = read_manifest(folder)
    if manifest is None:
        raise SystemExit(f"{run}: no finished control run (no {folder}/tiller-manifest.json)")
    cfg = manifest["config"]
    env_id, env_kwargs = cfg["env"], cfg.get("env_kwargs")
    model = PPO.load(folder / "ppo.zip", device="cpu")
    norm = VecNormalize.load(str(folder / "vecnormalize.pkl"), DummyVecEnv([lambda: make_env(env_id, env_kwargs)]))
    flipped: list[list[bool]] = [[] for _ in range(cfg["eval_episodes"])]

    def pitch(episode: int, env: Any) -> None:
        degrees = (np.degrees(env.unwrapped.data.qpos[2]) + 180) % 360 - 180
        flipped[episode].append(bool(abs(degrees) > 90))

    returns = true_returns(env_id, cfg["eval_episodes"], cfg["seed"] + 10_000, model, norm, env_kwargs,
                           observe=pitch)
    return returns, [float(np.mean(f)) for f in flipped]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        returns, shares = posture(Path(arg))
        episodes = ", ".join(f"{r:.0f} ({f:.0%})" for r, f in zip(returns, shares, strict=True))
        print(f"{Path(arg).name:<14} upside down {np.mean(shares):4.0%} of steps; per episode, return (upside down): "
              f"{episodes}")
