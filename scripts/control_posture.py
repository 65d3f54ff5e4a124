"""How much of an episode a finished HalfCheetah control run's policy spends on its back.

PPO on HalfCheetah has a well-known local optimum: the cheetah flips over and runs on its back, at about half
the return of an upright gait. docs/control.md uses this to read the spread of final returns over seeds.
For each run: the deterministic policy's true return over one 1,000-step episode (seed 10,000, as the loop's
evaluation) and the share of steps whose torso pitch (qpos[2], rooty) is beyond 90 degrees.

    python scripts/control_posture.py runs/control-measure/learned-s0 runs/control-measure/true-s0 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from tiller.control.gym_env import make_env


def posture(run: Path, env_id: str = "HalfCheetah-v5", seed: int = 10_000) -> tuple[float, float]:
    """(true return, share of steps upside down) of the run's final deterministic policy, one episode."""
    folder = run / "control"
    model = PPO.load(folder / "ppo.zip", device="cpu")
    norm = VecNormalize.load(str(folder / "vecnormalize.pkl"), DummyVecEnv([lambda: make_env(env_id)]))
    env = make_env(env_id)
    obs, _ = env.reset(seed=seed)
    total, flipped, done = 0.0, [], False
    while not done:
        action, _ = model.predict(norm.normalize_obs(obs), deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + float(reward), terminated or truncated
        pitch = (np.degrees(env.unwrapped.data.qpos[2]) + 180) % 360 - 180
        flipped.append(abs(pitch) > 90)
    env.close()
    return total, float(np.mean(flipped))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        ret, share = posture(Path(arg))
        print(f"{Path(arg).name:<20} return {ret:8.1f}   upside down {share:5.0%} of steps")
