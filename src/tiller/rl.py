"""Tensors for RL from a rollout: prompt+response sequences, per-token logprobs and values, EMA weights.

Layout (B sequences, prompt width P, response width R): ``input_ids`` is ``[left-padded prompt |
right-padded response]`` of width P+R. The logits at position P-1+t predict response token t, so the
per-token tensors (``logprobs``, ``values``, ``mask``) are (B, R), aligned with the response tokens.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd
from transformers import PretrainedConfig

from tiller import distributed
from tiller.adapters import unwrap
from tiller.batching import pad
from tiller.losses import logprobs_from_logits, masked_whiten
from tiller.models import ScalarModel, position_ids_from_mask


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R)
    response_ids: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R) float, 1 on real response tokens
    prompt_width: int

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_ids.to(device),
                             self.mask.to(device), self.prompt_width)

    def select(self, idx: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(self.input_ids[idx], self.attention_mask[idx], self.response_ids[idx], self.mask[idx],
                             self.prompt_width)


def build_sequences(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> SequenceBatch:
    """Join left-padded prompts and right-padded responses (an empty response keeps one masked pad)."""
    resp = [r if r else [pad_id] for r in response_ids]
    p = pad(prompt_ids, pad_id, side="left")
    pm = pad([[1] * len(x) for x in prompt_ids], 0, side="left")
    r = pad(resp, pad_id, side="right")
    rm = pad([[1] * len(x) if x else [0] for x in response_ids], 0, side="right")
    return SequenceBatch(torch.cat([p, r], 1), torch.cat([pm, rm], 1), r, rm.float(), p.shape[1])


@functools.cache
def accepts(model_class: type[nn.Module], argument: str) -> bool:
    """Whether ``model_class.forward`` takes ``argument`` (e.g. ``logits_to_keep``, which not every model has)."""
    return argument in inspect.signature(model_class.forward).parameters


def model_class(model: nn.Module) -> type[nn.Module]:
    """The class whose forward finally runs: under a DDP wrapper (or the PPO reference's ``module``) and a
    peft wrapper (which passes keywords through), the Hugging Face model's."""
    inner = getattr(model, "module", model)
    return type(unwrap(inner))


def without_common_padding(b: SequenceBatch) -> SequenceBatch:
    """``b`` minus the leading columns that are padding in every row (a minibatch's prompts are often all
    shorter than the rollout's longest one): less compute, the same logprobs and values."""
    real = b.attention_mask[:, : b.prompt_width - 1].any(0)
    k = int(real.int().argmax()) if bool(real.any()) else b.prompt_width - 1
    if k == 0:
        return b
    return SequenceBatch(b.input_ids[:, k:], b.attention_mask[:, k:], b.response_ids, b.mask, b.prompt_width - k)


def policy_forward(model: nn.Module, b: SequenceBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Response-token logprobs under ``model`` at the sampling temperature, and the logits. (B, R), (B, R, V)

    Only the positions that predict response tokens go through the unembedding (``logits_to_keep``,
    where the model has it)."""
    b = without_common_padding(b)
    width = b.response_ids.shape[1] + 1  # the last prompt position and the response positions
    # a class is hashable, but mypy checks type[X] against Hashable with the unbound X.__hash__
    keep = {"logits_to_keep": width} if accepts(model_class(model), "logits_to_keep") else {}  # type: ignore[arg-type]
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                position_ids=position_ids_from_mask(b.attention_mask), **keep)
    logits = out.logits[:, -width:-1].float()
    return logprobs_from_logits(logits, b.response_ids, temperature), logits


def _dropout_rates(model: nn.Module) -> list[tuple[object, str, float]]:
    """Every float dropout rate a forward may read: ``(owner, attribute, rate)``.

    Some models hold the rate as a float instead of an ``nn.Dropout`` (Llama and Qwen attention pass
    ``self.attention_dropout`` to the attention kernel; configs carry ``attn_pdrop``, ``hidden_dropout``...),
    so attributes whose name says dropout are read on every module and on every module's config. Only
    floats: bools and ints are flags or counts, and ``nn.Dropout`` children live in ``_modules``."""
    owners: dict[int, object] = {}
    for m in model.modules():
        owners.setdefault(id(m), m)
        config = getattr(m, "config", None)
        if isinstance(config, PretrainedConfig):
            owners.setdefault(id(config), config)
    return [(o, k, v) for o in owners.values() for k, v in vars(o).items()
            if isinstance(v, float) and ("dropout" in k or "pdrop" in k)]


def has_dropout(model: nn.Module) -> bool:
    """Whether a forward in train mode is random, so the sampler's logits are not the training forward's."""
    modules = any(isinstance(m, _DropoutNd) and m.p > 0 for m in model.modules())
    return modules or any(rate > 0 for _, _, rate in _dropout_rates(model))


def old_logprobs(policy: nn.Module, b: SequenceBatch, sampled: list[torch.Tensor | None] | None,
                 temperature: float, chunk: int = 64) -> torch.Tensor:
    """Response-token logprobs of the policy that sampled the rollout. (B, R)

    The loop sampler already computed them from the logits it sampled with (same weights, same
    temperature, no dropout), so only rows it could not supply (``None``, or no ``sampled`` at all) take
    a forward; masked positions are 0."""
    n = len(b.input_ids)
    missing = list(range(n)) if not sampled else [i for i, lp in enumerate(sampled) if lp is None]
    out = torch.zeros_like(b.mask)
    for i, lp in enumerate(sampled or []):
        if lp is not None:
            out[i, : len(lp)] = lp.to(out.device)
    for start in range(0, len(missing), chunk):
        idx = torch.tensor(missing[start : start + chunk], device=b.input_ids.device)
        out[idx] = policy_forward(policy, b.select(idx), temperature)[0]
    return out


def value_forward(value_model: ScalarModel, b: SequenceBatch) -> torch.Tensor:
    """V(s_t) for each response token t: the head read at the position that generates it. (B, R)

    Called through ``forward(per_token=True)``, not ``token_values``, so that a DDP-wrapped value model
    syncs its gradients (DDP hooks only what goes through its forward)."""
    b = without_common_padding(b)
    v = value_model(b.input_ids, b.attention_mask, per_token=True)
    return v[:, b.prompt_width - 1 : -1]


def whiten_across_ranks(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_whiten`` with the mean and (Bessel-corrected) variance of the masked entries of every
    data-parallel rank, so N ranks whiten a rollout as one process whitens all of it. (B, R)"""
    if not distributed.active():
        return masked_whiten(x, mask)
    m = mask.to(x.dtype)
    s1, n, s2 = distributed.all_sum(torch.stack([(x * m).sum(), m.sum(), (x * x * m).sum()]).double()).tolist()
    mean = s1 / n
    var = (s2 / n - mean * mean) * n / max(n - 1, 1.0)
    return (x - mean) * (var + 1e-8) ** -0.5 * m


def disable_dropout(model: nn.Module) -> None:
    """RL needs the sampling policy and the trained policy to be the same function (lm-human-preferences
    turns dropout off), otherwise the PPO ratio is not 1 on the first minibatch. Zeroes ``nn.Dropout``
    modules and the float rates of :func:`_dropout_rates` (Llama's attention dropout is one). The rates in
    ``model.config`` are zeroed too, so a policy saved after RL has no dropout in its config.json: set them
    again before fine-tuning it with dropout."""
    for m in model.modules():
        if isinstance(m, _DropoutNd):
            m.p = 0.0
    for owner, name, _ in _dropout_rates(model):
        setattr(owner, name, 0.0)


class EMA:
    """Exponential moving average of a model's weights (InstructGPT appendix C.4: EMA decay 0.992).

    Call :meth:`update` after every optimizer step. The shadow starts at zero and the average is
    ``shadow / (1 - decay**n)`` after ``n`` updates (Adam's bias correction), so it is a weighted mean of
    the post-step weights only: without the correction, and updated once per rollout, the saved policy
    kept 73-91% of the initial weights (issue #11). Float entries of the state dict (parameters and
    buffers) are averaged in at least float32; other entries are left alone."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.n = 0
        self.shadow = {k: torch.zeros_like(v, dtype=torch.promote_types(v.dtype, torch.float32))
                       for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold in the model's current weights: ``shadow = decay * shadow + (1 - decay) * weights``."""
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().to(self.shadow[k].dtype), 1 - self.decay)
        self.n += 1

    def average(self) -> dict[str, torch.Tensor]:
        """The bias-corrected average of the weights seen so far (needs at least one update)."""
        if self.n == 0:
            raise ValueError("EMA.average before any update")
        correction = 1 - self.decay**self.n
        return {k: s / correction for k, s in self.shadow.items()}

    def state_dict(self) -> dict[str, object]:
        return {"n": self.n, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the average into ``model``; with no update yet the model is its own average, left as is."""
        if self.n:
            model.load_state_dict(self.average(), strict=False)


class RunningMoments:
    """Running mean and standard deviation (Chan et al. parallel update), for reward scaling and baselines."""

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0, 0.0, 1.0

    @property
    def std(self) -> float:
        return self.var ** 0.5

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().float().flatten()
        n = xs.numel()
        if n == 0:
            return
        b_mean, b_var = float(xs.mean()), float(xs.var(unbiased=False))
        total = self.count + n
        delta = b_mean - self.mean
        m2 = (self.var * self.count if self.count else 0.0) + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.var = int(state["count"]), float(state["mean"]), float(state["var"])
