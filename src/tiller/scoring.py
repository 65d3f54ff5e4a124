"""Rewards for (prompt, response) pairs: one or several reward models, a Python function, an HTTP endpoint.

Several sources combine as Sparrow does (Glaese et al. 2022): preference RMs add up with weights, and a
rule RM (e.g. harmlessness) can act as a *penalty* (only scores below its threshold subtract) or a
*gate* (below the threshold the whole reward is replaced by ``gate_reward``).
"""

from __future__ import annotations

import importlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tiller.batching import batch, join
from tiller.chat import END, encode_prompt, encode_response
from tiller.config import ConfigError, field
from tiller.models import REWARD_FILE, ScalarModel, default_device, load_tokenizer, reward_members


def score_sorted(model: ScalarModel, seqs: list[list[int]], pad_id: int, device, chunk: int = 16) -> torch.Tensor:
    """Raw scores of many sequences, forwarded in length-sorted chunks so little compute goes to padding
    (answers range from a few tokens to the max; measured 2.1x on the RM loop, bench/rm_variants.py). (N,)"""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    parts = [model(**{k: v.to(device) for k, v in batch([seqs[i] for i in order[c : c + chunk]], pad_id).items()})
             for c in range(0, len(order), chunk)]
    return torch.cat(parts)[torch.argsort(torch.tensor(order, device=device))]


class RewardScorer:
    """A trained reward model; ``score`` returns normalised scores ``gain * (raw + bias)``.

    An ensemble RM (``RMConfig.ensemble``) scores with the mean of its members' normalised scores, minus
    ``uncertainty`` times their standard deviation: where the members disagree the answer is probably
    outside what they learned, which is where RL finds exploits (Coste et al. 2023's uncertainty-weighted
    optimisation)."""

    def __init__(self, path: str, device: str | None = None, batch_size: int = 64, max_len: int | None = None,
                 uncertainty: float = 0.0):
        tok = load_tokenizer(path)
        models = [ScalarModel.from_pretrained(m, tok, trainable=False).to(device or default_device())
                  for m in reward_members(path)]
        if any(m.kind == "value" for m in models):
            raise ConfigError(f"{path} is a value model (tiller-value.json), not a reward model: its head predicts "
                              "returns under one policy, so score with the RM it was initialised from")
        if max_len is None:  # score with the truncation the RM was trained (and its bias set) with
            meta = Path(path) / REWARD_FILE
            max_len = json.loads(meta.read_text()).get("max_len", 256) if meta.is_file() else 256
        self._init(models, tok, batch_size, max_len)
        self.path, self.uncertainty = path, uncertainty

    @classmethod
    def from_model(cls, model: ScalarModel, tok, batch_size: int = 64, max_len: int = 256) -> RewardScorer:
        """Score with a model already in memory (e.g. right after training it)."""
        scorer = cls.__new__(cls)
        scorer._init([model], tok, batch_size, max_len)
        scorer.path, scorer.uncertainty = "<in memory>", 0.0
        return scorer

    def _init(self, models: list[ScalarModel], tok, batch_size: int, max_len: int) -> None:
        self.models, self.tok = [m.eval() for m in models], tok
        self.batch_size, self.max_len = batch_size, max_len

    def encode(self, prompts: Sequence[Any], responses: Sequence[str],
               ended: Sequence[bool] | None = None) -> list[list[int]]:
        """Token ids of prompt + answer as the RM was trained on them; an answer with ``ended`` False was cut
        off before its end marker and is encoded without one, so the RM sees it unfinished."""
        done = ended if ended is not None else [True] * len(responses)
        return [join(encode_prompt(self.tok, p), self._response_ids(r, d), self.max_len)[0]
                for p, r, d in zip(prompts, responses, done, strict=True)]

    def _response_ids(self, response: str, ended: bool) -> list[int]:
        return encode_response(self.tok, response, ended)

    def reads_ids_of(self, tok) -> bool:
        """Whether token ids from ``tok`` mean the same to this RM (same vocabulary), so a policy's sampled
        tokens can be scored as they are instead of through decoded text."""
        return tok is self.tok or tok.get_vocab() == self.tok.get_vocab()

    def score_ids(self, token_ids: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Scores of (prompt ids, response ids) pairs as sampled (prompt cut from the left to fit). An answer
        that ended with the model's own EOS instead of ``<|end|>`` is read at ``<|end|>``: the RM learned
        to score answers rendered with it (``chat.render_response``), and reads its score at the last token."""
        end, eos = self.tok.convert_tokens_to_ids(END), self.tok.eos_token_id
        seqs = []
        for p, r in token_ids:
            r = list(r)
            if r and eos is not None and eos != end and r[-1] == eos:
                r[-1] = end
            seqs.append(join(list(p), r, self.max_len)[0])
        return self._combine(seqs)

    @torch.no_grad()
    def _raw(self, seqs: list[list[int]], member: int) -> torch.Tensor:
        if not seqs:
            return torch.zeros(0)
        model = self.models[member]
        device = next(model.parameters()).device
        return score_sorted(model, seqs, self.tok.pad_token_id, device, chunk=self.batch_size).cpu()

    def raw_scores(self, prompts: Sequence[Any], responses: Sequence[str], member: int = 0) -> torch.Tensor:
        return self._raw(self.encode(prompts, responses), member)

    def score(self, prompts: Sequence[Any], responses: Sequence[str],
              ended: Sequence[bool] | None = None) -> list[float]:
        return self._combine(self.encode(prompts, responses, ended))

    def _combine(self, seqs: list[list[int]]) -> list[float]:
        per_member = torch.stack([m.normalise(self._raw(seqs, i)) for i, m in enumerate(self.models)])
        if self.uncertainty and len(self.models) > 1:
            return (per_member.mean(0) - self.uncertainty * per_member.std(0, correction=0)).tolist()
        return per_member.mean(0).tolist()


class FunctionScorer:
    """``module:function`` taking (prompts, responses) and returning a list of floats."""

    def __init__(self, spec: str):
        module, _, name = spec.partition(":")
        try:
            self.fn: Callable = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"reward function {spec!r} cannot be imported: {e}") from None

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        return [float(x) for x in self.fn(list(prompts), list(responses))]


class HTTPScorer:
    """POST ``{"prompts": [...], "responses": [...]}`` to a URL that answers ``{"scores": [...]}``."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url, self.timeout = url, timeout

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        body = json.dumps({"prompts": list(prompts), "responses": list(responses)}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.url} answered HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"{self.url} cannot be reached: {e.reason}") from e
        except json.JSONDecodeError as e:
            raise RuntimeError(f"{self.url} did not answer JSON: {e}") from e
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list):
            raise RuntimeError(f'{self.url} answered without a "scores" list')
        if len(scores) != len(responses):
            raise RuntimeError(f"{self.url} returned {len(scores)} scores for {len(responses)} responses")
        return [float(s) for s in scores]


@dataclass
class RewardSource:
    kind: Literal["rm", "python", "http"] = field("rm", help="a reward model folder, module:function, or URL")
    path: str = field("", help="RM folder / 'module:function' / http(s) URL")
    name: str = field("", help="metric name (default: the kind and position)")
    weight: float = field(1.0, help="weight in the sum (or of the penalty)")
    role: Literal["sum", "penalty", "gate"] = field("sum", help="sum; penalty: add weight*min(0, s-threshold); gate")
    threshold: float = field(0.0, help="for penalty and gate")
    gate_reward: float = field(-5.0, help="reward given when a gate source scores below threshold")
    uncertainty: float = field(0.0, help="an ensemble RM: subtract this times its members' std (Coste et al. 2023)")

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("a reward source needs a path")


def make_scorer(src: RewardSource, device: str | None = None):
    if src.kind == "rm":
        return RewardScorer(src.path, device=device, uncertainty=src.uncertainty)
    if src.kind == "python":
        return FunctionScorer(src.path)
    return HTTPScorer(src.path)


def combine(parts: dict[str, torch.Tensor], sources: Sequence[RewardSource],
            names: Sequence[str] | None = None) -> torch.Tensor:
    """Pure combination of per-source scores (``parts[name]``, each (N,)) into one reward (N,).

    Sums and penalties add up; then each gate that fails replaces the reward by its own ``gate_reward``
    (with several failing gates, the lowest one wins). ``names`` default to the sources' own names."""
    names = list(names) if names is not None else [s.name for s in sources]
    total = torch.zeros_like(parts[names[0]])
    for name, src in zip(names, sources, strict=True):
        s = parts[name]
        if src.role == "sum":
            total = total + src.weight * s
        elif src.role == "penalty":
            total = total + src.weight * torch.clamp(s - src.threshold, max=0.0)
    gated = torch.full_like(total, float("inf"))
    for name, src in zip(names, sources, strict=True):
        if src.role == "gate":
            gated = torch.where(parts[name] < src.threshold, torch.minimum(gated, torch.tensor(src.gate_reward)), gated)
    return torch.where(torch.isinf(gated), total, gated)


class CompositeReward:
    """All reward sources of a run; ``score`` gives the combined reward and each part (for metrics).

    With ``policy_tok`` (RL), a reward model that shares the policy's vocabulary scores the tokens the policy
    sampled, not a re-encoding of their decoded text: decoding, stripping and re-encoding can change the
    tokens, and would append an end marker to an answer that was cut off. Other sources see the text."""

    def __init__(self, sources: Sequence[RewardSource], device: str | None = None, policy_tok=None):
        if not sources:
            raise ConfigError("at least one reward source is needed")
        self.sources = list(sources)
        self.names = [s.name or f"{s.kind}{i}" for i, s in enumerate(self.sources)]
        self.scorers = [make_scorer(s, device) for s in self.sources]
        self.by_ids = [policy_tok is not None and isinstance(sc, RewardScorer) and sc.reads_ids_of(policy_tok)
                       for sc in self.scorers]

    def score(self, prompts: Sequence[Any], responses: Sequence[str], ended: Sequence[bool] | None = None,
              token_ids: Sequence[tuple[list[int], list[int]]] | None = None,
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``ended``: whether each answer stopped at its end marker; ``token_ids``: (prompt, response) ids as
        sampled, used by reward models that read the policy's tokens."""
        parts = {}
        for name, sc, by_ids in zip(self.names, self.scorers, self.by_ids, strict=True):
            if by_ids and token_ids is not None:
                vals = sc.score_ids(token_ids)
            elif isinstance(sc, RewardScorer):
                vals = sc.score(prompts, responses, ended)
            else:
                vals = sc.score(prompts, responses)
            parts[name] = torch.tensor(vals, dtype=torch.float32)
        return combine(parts, self.sources, self.names), parts
