"""The reward predictor: an ensemble of MLPs r(o, a) fitted to clip comparisons (Christiano et al. 2017).

Sec. 2.2.1: P[a > b] = exp(sum r(a)) / (exp(sum r(a)) + exp(sum r(b))) = sigmoid(ret_a - ret_b), fitted by
cross-entropy to the labels mu. Sec. 2.2.3 ("Fitting the reward function"), which this module follows:
- an ensemble, each member trained on |D| comparisons sampled from D with replacement;
- a fraction 1/e of the data held out for validation;
- l2 regularisation whose coefficient is adjusted so validation loss stays 1.1-1.5x the training loss;
- optional dropout;
- a 10% chance that the human answers uniformly at random, instead of the bare softmax;
- the RL reward normalises each member independently and then averages them.
Appendix A.1: for MuJoCo r is a two-layer MLP with 64 units a layer and leaky ReLUs (slope 0.01).

Shapes: K members, n segments (or comparisons), T steps, D = obs_dim + act_dim.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tiller.config import ConfigError, field
from tiller.control.segments import Segment, index_pairs

_EPS = 1e-8


@dataclass
class PredictorConfig:
    """The reward ensemble's hyperparameters; defaults after the paper's MuJoCo setup (Appendix A.1)."""

    members: int = field(3, help="networks in the ensemble, each fitted to its own bootstrap resample")
    hidden: int = field(64, help="units per hidden layer (the paper: 64)")
    layers: int = field(2, help="hidden layers (the paper: 2, leaky ReLU)")
    dropout: float = field(0.0, help="dropout after each hidden layer")
    l2: float = field(1e-3, help="initial coefficient of sum(W^2) per member; tuned after each fit when tune_l2")
    lr: float = field(3e-4, help="Adam learning rate")
    batch_size: int = field(32, help="comparisons per gradient step (per member)")
    epochs: int = field(10, help="passes over each member's bootstrap resample per fit")
    label_noise: float = field(0.1, help="P(the labeler answers at random), sec. 2.2.3")
    val_frac: float = field(1 / math.e, help="share of comparisons held out for validation (the paper: 1/e)")
    tune_l2: bool = field(True, help="adjust l2 after each fit so validation loss stays 1.1-1.5x training loss")
    seed: int = field(0, help="random seed of the members' weights, resamples and validation split")
    l2_factor: float = field(1.5, help="l2 is multiplied or divided by this when val/train leaves [1.1, 1.5]")
    min_val_labels: int = field(10, help="below this many comparisons nothing is held out (and l2 is not tuned)")

    def validate(self) -> None:
        if self.members < 1 or self.hidden < 1 or self.layers < 0:
            raise ConfigError("members >= 1, hidden >= 1 and layers >= 0 are required")
        if not 0.0 <= self.label_noise < 1.0:
            raise ConfigError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ConfigError(f"val_frac must be in [0, 1), got {self.val_frac}")
        if not 0.0 <= self.dropout < 1.0 or self.l2 < 0 or self.l2_factor <= 1.0:
            raise ConfigError("dropout in [0, 1), l2 >= 0 and l2_factor > 1 are required")


@dataclass
class Comparison:
    """mu = P(a preferred): 1, 0, or 0.5 for "equally good" ("can't tell" answers are never stored)."""

    a: Segment
    b: Segment
    mu: float


# --- the maths: pure functions ----------------------------------------------------------------------


def preference_probs(ret_a: Tensor, ret_b: Tensor, label_noise: float) -> Tensor:
    """P(a preferred) = (1 - noise) * sigmoid(ret_a - ret_b) + noise / 2 (the labeler errs at random)."""
    return (1.0 - label_noise) * torch.sigmoid(ret_a - ret_b) + label_noise / 2


def preference_nll(ret_a: Tensor, ret_b: Tensor, mu: Tensor, label_noise: float) -> Tensor:
    """Elementwise -[mu log P + (1 - mu) log(1 - P)] with P = preference_probs, computed in log space.

    log P = logaddexp(log(1 - noise) + logsigmoid(d), log(noise / 2)) stays finite for any d, even noise 0.
    """
    d = ret_a - ret_b
    log_keep = math.log1p(-label_noise)
    log_rand = math.log(label_noise / 2) if label_noise > 0 else -math.inf
    rand = torch.full_like(d, log_rand)
    log_p = torch.logaddexp(log_keep + F.logsigmoid(d), rand)
    log_q = torch.logaddexp(log_keep + F.logsigmoid(-d), rand)
    mu = mu.to(d.dtype)
    return -(mu * log_p + (1.0 - mu) * log_q)


def preference_loss(ret_a: Tensor, ret_b: Tensor, mu: Tensor, label_noise: float) -> Tensor:
    """Mean cross-entropy between the labels mu and P(a preferred) (sec. 2.2.1, with 2.2.3's noise)."""
    return preference_nll(ret_a, ret_b, mu, label_noise).mean()


def preference_accuracy(ret_a: Tensor, ret_b: Tensor, mu: Tensor) -> tuple[int, int]:
    """(right, counted): predicted ret_a > ret_b against mu; ties in mu (0.5) or in the returns are skipped."""
    mu = mu.to(ret_a.dtype)
    counted = (mu != 0.5) & (ret_a != ret_b)
    right = counted & ((ret_a > ret_b) == (mu > 0.5))
    return int(right.sum()), int(counted.sum())


def tuned_l2(l2: float, val_loss: float, train_loss: float, factor: float,
             low: float = 1.1, high: float = 1.5) -> float:
    """Sec. 2.2.3: keep val loss within [low, high] x train loss: more l2 when overfitting, less when not."""
    ratio = val_loss / max(train_loss, _EPS)
    if ratio > high:
        return l2 * factor
    if ratio < low:
        return l2 / factor
    return l2


# --- the ensemble --------------------------------------------------------------------------------------


class _EnsembleMLP(nn.Module):
    """K independent MLPs as batched matmuls: (K, N, D) -> (K, N), one forward for the whole ensemble."""

    def __init__(self, k: int, d_in: int, hidden: int, layers: int, dropout: float, gen: torch.Generator):
        super().__init__()
        dims = [d_in] + [hidden] * layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter((torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(k, 1, fan_out, generator=gen) * 2 - 1) * bound))
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.leaky_relu(x, 0.01)
                if self.dropout > 0:
                    x = F.dropout(x, self.dropout, self.training)
        return x.squeeze(-1)

    def weight_sq(self) -> Tensor:
        """(K,) sum of squared weights (biases excluded) per member: the l2 penalty's base."""
        return sum((w**2).sum((1, 2)) for w in self.weights)  # type: ignore[return-value]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small MLPs gain nothing from a second torch thread on a shared CPU (docs: control_api measurements)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stack(segs: list[Segment]) -> tuple[Tensor, Tensor]:
    """(n, T, D) float32 inputs obs|acts, zero-padded to the longest clip, and the (n, T) mask of real steps."""
    t_max = max(len(s) for s in segs)
    d = segs[0].obs.shape[1] + segs[0].acts.shape[1]
    x = np.zeros((len(segs), t_max, d), dtype=np.float32)
    mask = np.zeros((len(segs), t_max), dtype=np.float32)
    for i, s in enumerate(segs):
        x[i, : len(s)] = np.concatenate([s.obs, s.acts], axis=1)
        mask[i, : len(s)] = 1.0
    return torch.from_numpy(x), torch.from_numpy(mask)


class RewardEnsemble:
    """K reward predictors r(o, a); ``reward`` is what PPO optimises, ``member_returns`` what queries use."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: PredictorConfig | None = None):
        self.cfg = cfg = cfg or PredictorConfig()
        cfg.validate()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        gen = torch.Generator().manual_seed(cfg.seed)
        self.model = _EnsembleMLP(cfg.members, obs_dim + act_dim, cfg.hidden, cfg.layers, cfg.dropout, gen)
        self.model.eval()
        # Adam is made on the first fit: torch.optim's first import costs seconds, and a process that only
        # computes rewards (the RL workers, the web app) never needs it
        self._opt: torch.optim.Adam | None = None
        self._opt_state: dict[str, Any] | None = None  # a loaded optimizer state, applied when Adam is made
        self.l2 = [cfg.l2] * cfg.members  # per member, remembered from fit to fit
        self.n_fits = 0
        # Input normalisation, set from the first fit's segments and then frozen, so later fits keep
        # refining one function instead of chasing a moving input scale.
        d = obs_dim + act_dim
        self.in_mean, self.in_std, self.in_set = torch.zeros(d), torch.ones(d), False
        # Reward normalisation (update_norm): per member, then of the members' mean.
        k = cfg.members
        self.member_mean, self.member_std = torch.zeros(k), torch.ones(k)
        self.out_mean, self.out_std = 0.0, 1.0
        self._np: tuple[Any, ...] | None = None  # numpy views for reward(), see _numpy_params

    # -- forward passes ------------------------------------------------------------------------------

    def _step_rewards(self, x: Tensor) -> Tensor:
        """(N, D) raw inputs -> (K, N) raw per-step rewards of every member."""
        x = (x - self.in_mean) / self.in_std
        return self.model(x.unsqueeze(0).expand(self.cfg.members, -1, -1))

    def _returns(self, x: Tensor, mask: Tensor) -> Tensor:
        """(n, T, D), (n, T) -> (K, n) clip returns, sum over real steps."""
        n, t, d = x.shape
        r = self._step_rewards(x.reshape(n * t, d)).reshape(-1, n, t)
        return (r * mask).sum(-1)

    def member_returns(self, segs: list[Segment]) -> Tensor:
        """(K, n) predicted clip returns, unnormalised, without dropout and without gradients."""
        x, mask = _stack(segs)
        with _one_thread(), torch.inference_mode():
            return self._returns(x, mask)

    def reward(self, obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(N,) float32 reward for RL: each member normalised, averaged, and the average normalised again."""
        obs2 = np.asarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        acts2 = np.asarray(acts, dtype=np.float32).reshape(-1, self.act_dim)
        if len(obs2) > 256:  # big batches (update_norm-sized): torch's matmuls are faster
            x = torch.from_numpy(np.concatenate([obs2, acts2], axis=1))
            with _one_thread(), torch.inference_mode():
                z_t = self._normalised_mean(self._step_rewards(x))
            return ((z_t.numpy() - self.out_mean) / self.out_std).astype(np.float32)
        if self._np is None:
            self._np = self._numpy_params()
        in_mean, in_std, ws, bs, m_mean, m_std = self._np
        h = ((np.concatenate([obs2, acts2], axis=1) - in_mean) / in_std)[None]  # (1, N, D)
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            h = h @ w + b  # (K, N, H)
            if i < len(ws) - 1:
                h = np.maximum(h, 0.01 * h)  # leaky ReLU, slope 0.01
        z = ((h[..., 0] - m_mean) / m_std).mean(0)
        return ((z - self.out_mean) / self.out_std).astype(np.float32)

    def _numpy_params(self) -> tuple[Any, ...]:
        """Numpy views of the weights and statistics for ``reward``: PPO asks for one step at a time, where
        torch's per-op overhead would cost a large share of the env-step rate. Views share the tensors'
        memory; the cache is dropped whenever a tensor is replaced (fit, update_norm, load_state_dict)."""
        return (self.in_mean.numpy(), self.in_std.numpy(),
                [w.detach().numpy() for w in self.model.weights], [b.detach().numpy() for b in self.model.biases],
                self.member_mean.numpy()[:, None], self.member_std.numpy()[:, None])

    def _normalised_mean(self, r: Tensor) -> Tensor:
        """(K, N) -> (N,): sec. 2.2.3, "independently normalizing each of these predictors and then averaging"."""
        return ((r - self.member_mean[:, None]) / self.member_std[:, None]).mean(0)

    def update_norm(self, segs: list[Segment]) -> None:
        """Set the normalisation so the reward has mean 0 and std 1 over these (recent) segments' steps."""
        x, mask = _stack(segs)
        steps = x.reshape(-1, x.shape[-1])[mask.reshape(-1) > 0]
        with _one_thread(), torch.inference_mode():
            r = self._step_rewards(steps)  # (K, N)
            self.member_mean, self.member_std = r.mean(1), r.std(1, correction=0).clamp_min(_EPS)
            z = self._normalised_mean(r)
        self.out_mean, self.out_std = float(z.mean()), max(float(z.std(correction=0)), _EPS)
        self._np = None

    # -- fitting -------------------------------------------------------------------------------------

    def is_validation(self, c: Comparison) -> bool:
        """Held out or not, by a hash of (seed, a.id, b.id): stable as the label set grows, so a comparison
        never moves from training into validation between fits."""
        h = hashlib.blake2b(f"{self.cfg.seed}|{c.a.id}|{c.b.id}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2.0**64 < self.cfg.val_frac

    def fit(self, comparisons: list[Comparison]) -> dict[str, float]:
        """Train every member ``epochs`` passes over its own bootstrap resample of the training comparisons.

        Continues from the current weights (the paper trains the predictor continually). Returns
        loss/train (each member on its resample), loss/val, val/accuracy and train/accuracy (the members'
        mean return), l2 (members' mean, after tuning), and counts; val metrics are NaN with nothing held out.
        """
        cfg, k = self.cfg, self.cfg.members
        if not comparisons:
            raise ValueError("fit needs at least one comparison")
        # 1. unique segments, and each comparison as indices into them
        segs, a_list, b_list = index_pairs([(c.a, c.b) for c in comparisons])
        a_idx, b_idx = torch.tensor(a_list), torch.tensor(b_list)
        mu = torch.tensor([c.mu for c in comparisons], dtype=torch.float32)
        x, mask = _stack(segs)
        if not self.in_set:
            steps = x.reshape(-1, x.shape[-1])[mask.reshape(-1) > 0]
            # the floor keeps a coordinate that barely moves under the first (random) policy from being
            # blown up a thousandfold once the policy starts moving it
            self.in_mean, self.in_std = steps.mean(0), steps.std(0, correction=0).clamp_min(1e-2)
            self.in_set = True
        # 2. the held-out split (none while there are few labels), then a bootstrap resample per member
        n = len(comparisons)
        held = np.array([n >= cfg.min_val_labels and self.is_validation(c) for c in comparisons])
        if held.all():
            held[:] = False
        train_ids, val_ids = np.flatnonzero(~held), np.flatnonzero(held)
        rng = np.random.default_rng([cfg.seed, self.n_fits])
        boot = train_ids[rng.integers(0, len(train_ids), size=(k, len(train_ids)))]  # (K, n_train)
        # 3. epochs of minibatches; member k's batch is boot[k, j:j+B], all members in one forward
        opt = self._optimizer()
        with _one_thread():
            self.model.train()
            steps_done = 0
            for _ in range(cfg.epochs):
                order = rng.permuted(boot, axis=1)
                for j in range(0, order.shape[1], cfg.batch_size):
                    ids = torch.from_numpy(order[:, j:j + cfg.batch_size])  # (K, b)
                    ret_a, ret_b = self._batch_returns(x, mask, a_idx[ids], b_idx[ids])
                    loss = preference_loss(ret_a, ret_b, mu[ids], cfg.label_noise)  # mean over K and b
                    penalty = (torch.tensor(self.l2) * self.model.weight_sq()).sum() / k
                    opt.zero_grad(set_to_none=True)
                    (loss + penalty).backward()
                    opt.step()
                    steps_done += 1
            self.model.eval()
            # 4. evaluate without dropout, then tune l2 (sec. 2.2.3)
            with torch.inference_mode():
                rets = self._returns(x, mask)  # (K, n_segments)
        metrics = self._evaluate(rets, a_idx, b_idx, mu, boot, train_ids, val_ids)
        self._np = None
        self.n_fits += 1
        metrics.update({"fit/steps": float(steps_done), "fit/n_train": float(len(train_ids)),
                        "fit/n_val": float(len(val_ids)), "l2": float(np.mean(self.l2))})
        return metrics

    def _optimizer(self) -> torch.optim.Adam:
        if self._opt is None:
            self._opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
            if self._opt_state is not None:
                self._opt.load_state_dict(self._opt_state)
                self._opt_state = None
        return self._opt

    def _batch_returns(self, x: Tensor, mask: Tensor, ia: Tensor, ib: Tensor) -> tuple[Tensor, Tensor]:
        """Member k's returns on its own comparisons: ia, ib (K, b) segment indices -> two (K, b)."""
        k, b = ia.shape
        both = torch.cat([ia, ib], dim=1)  # (K, 2b)
        t, d = x.shape[1], x.shape[2]
        inp = (x[both] - self.in_mean) / self.in_std  # (K, 2b, T, D)
        r = self.model(inp.reshape(k, 2 * b * t, d)).reshape(k, 2 * b, t)
        ret = (r * mask[both]).sum(-1)
        return ret[:, :b], ret[:, b:]

    def _evaluate(self, rets: Tensor, a_idx: Tensor, b_idx: Tensor, mu: Tensor, boot: np.ndarray,
                  train_ids: np.ndarray, val_ids: np.ndarray) -> dict[str, float]:
        cfg = self.cfg
        ra, rb = rets[:, a_idx], rets[:, b_idx]  # (K, n_comparisons)
        train_loss = [float(preference_loss(ra[i, boot[i]], rb[i, boot[i]], mu[boot[i]], cfg.label_noise))
                      for i in range(cfg.members)]
        out = {"loss/train": float(np.mean(train_loss)), "loss/val": math.nan, "val/accuracy": math.nan,
               "train/accuracy": _accuracy(ra.mean(0)[train_ids], rb.mean(0)[train_ids], mu[train_ids])}
        if len(val_ids):
            val_loss = [float(preference_loss(ra[i, val_ids], rb[i, val_ids], mu[val_ids], cfg.label_noise))
                        for i in range(cfg.members)]
            out["loss/val"] = float(np.mean(val_loss))
            out["val/accuracy"] = _accuracy(ra.mean(0)[val_ids], rb.mean(0)[val_ids], mu[val_ids])
            if cfg.tune_l2:
                self.l2 = [tuned_l2(l2, v, t, cfg.l2_factor)
                           for l2, v, t in zip(self.l2, val_loss, train_loss, strict=True)]
        return out

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads it back."""
        return {"config": asdict(self.cfg), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "model": self.model.state_dict(),
                "optimizer": self._opt.state_dict() if self._opt is not None else self._opt_state, "l2": list(self.l2),
                "n_fits": self.n_fits, "in_mean": self.in_mean, "in_std": self.in_std, "in_set": self.in_set,
                "member_mean": self.member_mean, "member_std": self.member_std,
                "out_mean": self.out_mean, "out_std": self.out_std}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if (d["obs_dim"], d["act_dim"]) != (self.obs_dim, self.act_dim) or d["config"] != asdict(self.cfg):
            raise ConfigError("checkpoint was saved by an ensemble of another shape or config: "
                             f"{d['obs_dim']}+{d['act_dim']} {d['config']}")
        self.model.load_state_dict(d["model"])
        self._opt, self._opt_state = None, d["optimizer"]
        self.l2, self.n_fits = list(d["l2"]), int(d["n_fits"])
        self.in_mean, self.in_std, self.in_set = d["in_mean"], d["in_std"], bool(d["in_set"])
        self.member_mean, self.member_std = d["member_mean"], d["member_std"]
        self.out_mean, self.out_std = float(d["out_mean"]), float(d["out_std"])
        self._np = None


def _accuracy(ret_a: Tensor, ret_b: Tensor, mu: Tensor) -> float:
    right, counted = preference_accuracy(ret_a, ret_b, mu)
    return right / counted if counted else math.nan
