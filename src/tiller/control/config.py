"""``tiller control run``'s settings: one typed dataclass, loaded from YAML with ``key=value`` overrides like
every stage (``tiller.config.load_config``).

The PPO defaults are Stable-Baselines3's own, which are Schulman et al. 2017's MuJoCo settings (2,048
transitions per update, 10 epochs of minibatches of 64, Adam 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2) and,
with ``normalize: true`` (observations and rewards through ``VecNormalize``), the RL Zoo's ``mujoco-defaults``
for locomotion. We keep these rather than the Zoo's per-task tuned sets (HalfCheetah's learning rate 2e-5, one
env) because one PPO must serve every task and both arms, and because the tuned sets were tuned on the true,
fixed reward, not on a predictor that moves under the policy. ``n_steps`` is per env: 512 x 4 envs keeps the
2,048 transitions per update of the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tiller.config import ConfigError, field
from tiller.control.predictor import PredictorConfig


@dataclass
class PPOSettings:
    """Stable-Baselines3 PPO's arguments (the names are SB3's), plus observation/reward normalisation."""

    n_steps: int = field(512, help="env steps per env between updates (x n_envs = transitions per rollout)")
    batch_size: int = field(64, help="minibatch size of each PPO epoch")
    n_epochs: int = field(10, help="passes over each rollout")
    learning_rate: float = field(3e-4, help="Adam learning rate")
    gamma: float = field(0.99, help="discount")
    gae_lambda: float = field(0.95, help="GAE lambda")
    clip_range: float = field(0.2, help="PPO's clip on the probability ratio")
    ent_coef: float = field(0.0, help="entropy bonus")
    vf_coef: float = field(0.5, help="value-loss weight")
    max_grad_norm: float = field(0.5, help="gradient clipping")
    net_arch: list[int] = field(default_factory=lambda: [64, 64], help="hidden sizes of the policy and value MLPs")
    log_std_init: float = field(0.0, help="initial log std of the Gaussian policy")
    use_sde: bool = field(False, help="generalised state-dependent exploration (gSDE)")
    normalize_obs: bool = field(True, help="VecNormalize the policy's observations (the predictor sees raw ones)")
    normalize_reward: bool = field(True, help="VecNormalize the rewards PPO trains on (by the discounted return's std)")
    device: str = field("cpu", help="torch device of the policy (an MLP: the CPU is usually fastest)")

    def validate(self) -> None:
        if self.n_steps < 2 or self.batch_size < 2 or self.n_epochs < 1:
            raise ConfigError("ppo: n_steps and batch_size must be >= 2, n_epochs >= 1")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError("ppo: gamma must be in (0, 1] and gae_lambda in [0, 1]")


@dataclass
class AppSourceConfig:
    """Where people compare the clips (``source: app``): the labeling app's database and the clip batches."""

    db: str = field("sqlite:///feedback.db", help="the app's database URL")
    batch_prefix: str = field("", help="name prefix of the clip-comparison batches (default: control-RUN)")
    clips_dir: Path | None = field(None, help="where rendered MP4 clips go (default: RUN/control-clips)")
    task: str = field("Which clip shows the better behaviour?", help="the question shown above every pair")
    overlap: int = field(1, help="labelers per pair (each answer is one comparison)")
    chunk: int = field(10, help="pairs per batch: rendering a clip takes ~2 s here, so people start on the first "
                                "batch while the rest render")
    size: int = field(256, help="clip width and height in pixels (even)")
    fps: int | None = field(None, help="clip frames per second (default: the env's real time, 1 / dt)")
    poll: float = field(5.0, help="seconds between looks for new answers while waiting for the first fit")
    min_first: int = field(0, help="answers to wait for before RL starts (0: initial_labels); never waited "
                                   "for afterwards")
    timeout: float | None = field(None, help="stop waiting for the first answers after this many seconds")

    def validate(self) -> None:
        if self.overlap < 1 or self.chunk < 1:
            raise ConfigError("app: overlap and chunk must be >= 1")
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"app: size must be an even number of pixels >= 16 (H.264), not {self.size}")
        if self.fps is not None and self.fps < 1:
            raise ConfigError(f"app: fps must be >= 1, not {self.fps}")


@dataclass
class ControlConfig:
    """Deep RL from human preferences (Christiano et al. 2017) on a gymnasium control task."""

    env: str = field("HalfCheetah-v5", help="gymnasium environment id")
    env_kwargs: dict[str, Any] = field(
        default_factory=dict, help="gym.make's keyword arguments, e.g. env_kwargs.terminate_when_unhealthy=false "
                                   "(Hopper, Walker2d: the paper removes termination, see control.gym_env)")
    total_steps: int = field(2_000_000, help="PPO environment steps (the initial random-policy clips not counted)")
    labels: int = field(700, help="comparisons asked over the run (the paper's 700 for MuJoCo); with source=app the "
                                         "last step's share is not asked: nobody could answer it before the run ends")
    initial_labels: int | None = field(
        None, help="comparisons of random-policy clips asked before RL starts (default: a quarter of labels)")
    segment_length: int = field(25, help="steps per clip (HalfCheetah: 25 x 0.05 s = 1.25 s; the paper: 1-2 s)")
    buffer_segments: int = field(1_000, help="recent clips kept to draw query candidates from")
    n_envs: int = field(4, help="environments stepped together (DummyVecEnv)")
    seed: int = field(0, help="random seed (envs, PPO, predictor, queries)")
    # `reward=true` and `reward: true` read as the boolean in YAML: taken for "true" (__post_init__)
    reward: Literal["learned", "true"] | bool = field(
        "learned", help="learned: PPO on the predictor's reward; true: the same PPO on the env's reward (baseline)")
    queries: Literal["disagreement", "uniform"] = field(
        "disagreement", help="which candidate pairs to ask about: largest ensemble variance (paper) or at random")
    candidates_per_query: int = field(10, help="candidate pairs sampled per comparison asked (disagreement)")
    source: Literal["oracle", "app"] = field(
        "oracle", help="who compares: oracle (the true reward, synthetic and immediate) or app (people)")
    oracle_tie_eps: float = field(0.0, help="oracle: true-return differences up to this are 'equally good'")
    app: AppSourceConfig = field(default_factory=AppSourceConfig, help="source: app settings")
    predictor: PredictorConfig = field(default_factory=PredictorConfig, help="the reward-predictor ensemble")
    ppo: PPOSettings = field(default_factory=PPOSettings, help="PPO (Stable-Baselines3)")
    refit_every: int = field(10_000, help="env steps between predictor fits (when new comparisons came)")
    checkpoint_every: int = field(50_000, help="env steps between resumable checkpoints (0: none)")
    eval_episodes: int = field(5, help="episodes of the true return for the random and the final policy")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers")

    def __post_init__(self) -> None:
        if self.reward is True:
            self.reward = "true"
        elif self.reward is False:
            raise ConfigError("reward must be 'learned' or 'true'")

    @property
    def n_initial(self) -> int:
        """Initial comparisons: ``initial_labels``, or a quarter of the budget (at least one)."""
        if self.initial_labels is not None:
            return self.initial_labels
        return max(1, self.labels // 4) if self.labels else 0

    def validate(self) -> None:
        if self.total_steps < 1 or self.n_envs < 1:
            raise ConfigError("total_steps and n_envs must be >= 1")
        if self.segment_length < 1:
            raise ConfigError("segment_length must be >= 1")
        if self.labels < 0 or (self.initial_labels is not None and not 0 <= self.initial_labels <= self.labels):
            raise ConfigError(f"initial_labels must be in [0, labels={self.labels}]")
        if self.reward == "learned" and self.n_initial < 1:
            raise ConfigError("reward=learned needs labels >= 1 and initial_labels >= 1 (the first fit)")
        if self.candidates_per_query < 1:
            raise ConfigError("candidates_per_query must be >= 1")
        if self.buffer_segments < 2:
            raise ConfigError("buffer_segments must be >= 2 (a pair)")
        if self.refit_every < 1 or self.checkpoint_every < 0 or self.eval_episodes < 0:
            raise ConfigError("refit_every must be >= 1, checkpoint_every and eval_episodes >= 0")
