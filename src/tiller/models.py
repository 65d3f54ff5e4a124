"""Loading any Hugging Face causal LM for tiller, and the scalar-head models (reward and value).

Every model goes through :func:`load_tokenizer`, which guarantees the chat markers of ``tiller.chat`` are
single special tokens and that the pad token is not EOS (a pad equal to EOS makes a model never learn
to stop: its EOS labels get masked as padding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tiller.chat import END, SPECIAL_TOKENS
from tiller.losses import last_token_index

PAD = "<|pad|>"
REWARD_FILE = "tiller-reward.json"
VALUE_FILE = "tiller-value.json"  # marks a value model, which must not pass for a reward model
MEMBERS_DIR = "members"  # an ensemble RM keeps members 1.. here; member 0 is the folder itself


def reward_members(path: str | Path) -> list[Path]:
    """The folders of an RM's members: ``[path]`` for a single RM, ``[path, path/members/1, ...]`` else."""
    meta = Path(path) / REWARD_FILE
    extra = json.loads(meta.read_text()).get("members", []) if meta.is_file() else []
    return [Path(path), *(Path(path) / m for m in extra)]


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer with the chat markers as special tokens and a pad token distinct from EOS."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        if PAD not in tok.get_vocab():
            tok.add_special_tokens({"pad_token": PAD})
        else:
            tok.pad_token = PAD
    if tok.eos_token is None:
        tok.eos_token = END
    return tok


def stop_token_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: ``<|end|>`` and the model's own EOS."""
    ids = [cast(int, tok.convert_tokens_to_ids(END))]  # one token string in, one id out
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def _fit_embeddings(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    # the embedding's weight is a Parameter; nn.Module.__getattr__ is typed as Tensor | Module
    weight = cast(torch.Tensor, model.get_input_embeddings().weight)
    if weight.shape[0] < len(tok):
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id


def default_device() -> str:
    """Where a model goes when nobody says: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_dtype(trainable: bool, dtype: torch.dtype | None = None) -> torch.dtype | str:
    """The dtype to load weights in: ``dtype`` if given, else float32 for a model we train (AdamW keeps no
    fp32 master weights, so a bf16 parameter of 0.5 does not move at lr 1e-5) and the checkpoint's own
    dtype (``"auto"``) for a frozen one, which only runs forwards."""
    if dtype is not None:
        return dtype
    return torch.float32 if trainable else "auto"


def load_policy(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trainable: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local folder or a hub name, ready for the chat format.

    ``trainable`` loads in float32 (see :func:`load_dtype`); ``trainable=False`` keeps the checkpoint's
    dtype and returns the model frozen (eval mode, no gradients), e.g. the reference policy or a sampler.
    ``device`` None means :func:`default_device`."""
    tok = load_tokenizer(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=load_dtype(trainable, dtype))
    _fit_embeddings(model, tok)
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), so mypy sees the unbound
    # signature and takes the device for ``self``
    model.to(device or default_device())  # type: ignore[arg-type]
    if not trainable:
        model.eval().requires_grad_(False)
    return model, tok


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (Hugging Face's
    gradient checkpointing, non-reentrant). For a :class:`ScalarModel` it applies to its transformer. Only
    training-mode forwards are affected; sampling (eval mode) keeps its KV cache."""
    hf = cast(PreTrainedModel, model.hf if isinstance(model, ScalarModel) else model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(hf).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # the name since transformers 5
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, so left padding does not shift them. (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _head(hf: PreTrainedModel) -> nn.Linear:
    """The scalar head of a sequence-classification model (``score`` in Llama, Qwen, GPT-2, ...)."""
    head = getattr(hf, "score", None)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(hf).__name__}: expected a Linear `score` head")
    return head


def _with_head_bias(hf: PreTrainedModel) -> nn.Linear:
    """The head, replaced by an equal Linear with a (zero) bias if it had none (Llama's and GPT-2's have
    none): a value head needs one to hold the RM's normalisation offset."""
    head = _head(hf)
    if head.bias is None:
        new = nn.Linear(head.in_features, head.out_features, bias=True,
                        device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(head.weight)
            new.bias.zero_()
        hf.score = head = new
    return head


class ScalarModel(nn.Module):
    """The LM with its unembedding replaced by a scalar head (InstructGPT section 3.5).

    Used as the reward model (read at the last real token) and as the value model (read at every
    token). Stored as an ``AutoModelForSequenceClassification`` folder with ``num_labels=1`` so other
    tools (e.g. TRL) load it too. A reward model (``kind="reward"``) keeps its normalisation
    ``score = gain * (raw + bias)`` beside it in ``tiller-reward.json`` and applies it whenever it scores.
    A value model (``kind="value"``, see :meth:`value_from`) has that normalisation folded into its head
    and is marked by ``tiller-value.json`` instead, so nothing mistakes it for a reward model.
    """

    def __init__(self, hf: PreTrainedModel, bias: float = 0.0, gain: float = 1.0, kind: str = "reward"):
        super().__init__()
        self.hf = hf
        self.bias = bias
        self.gain = gain
        self.kind = kind

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        tok: PreTrainedTokenizerBase | None = None,
        *,
        trainable: bool = True,
        dtype: torch.dtype | None = None,
    ) -> ScalarModel:
        """From an RM folder, a value folder, or any causal LM folder (a fresh, zero-initialised head).

        ``trainable`` loads in float32; ``trainable=False`` keeps the checkpoint's dtype and returns the
        model frozen (eval mode, no gradients), e.g. an RM that only scores (see :func:`load_dtype`)."""
        tok = tok or load_tokenizer(name_or_path)
        hf = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), num_labels=1, dtype=load_dtype(trainable, dtype)
        )
        _fit_embeddings(hf, tok)
        norm, value = Path(name_or_path) / REWARD_FILE, Path(name_or_path) / VALUE_FILE
        if norm.is_file():
            meta = json.loads(norm.read_text())
            model = cls(hf, meta.get("bias", 0.0), meta.get("gain", 1.0))
        elif value.is_file():
            head_bias = json.loads(value.read_text())["head_bias"]
            with torch.no_grad():
                _with_head_bias(hf).bias.fill_(head_bias)
            model = cls(hf, kind="value")
        else:
            head = _head(hf)
            with torch.no_grad():  # start at 0 so early rewards don't swamp the KL term
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()
            model = cls(hf)
        if not trainable:
            model.eval().requires_grad_(False)
        return model

    @classmethod
    def value_from(cls, name_or_path: str | Path, tok: PreTrainedTokenizerBase | None = None) -> ScalarModel:
        """A trainable value model initialised from a reward model (InstructGPT) or a policy.

        From an RM folder (member 0 of an ensemble) the normalisation is folded into the head, weight
        ``gain * w`` and bias ``gain * (b + bias)``, so :meth:`token_values` starts on the scale of the
        rewards PPO sees rather than the RM's raw one. From a policy folder the head starts at zero."""
        model = cls.from_pretrained(name_or_path, tok, trainable=True)
        head = _with_head_bias(model.hf)
        if model.kind == "reward":
            with torch.no_grad():
                head.weight.mul_(model.gain)
                head.bias.add_(model.bias).mul_(model.gain)
        model.bias, model.gain, model.kind = 0.0, 1.0, "value"
        return model

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        """An RM folder with ``tiller-reward.json``, or for a value model one with ``tiller-value.json``
        whose head bias is in the marker (it is not in the architecture's head, so the weights file
        holds only what a plain ``from_pretrained`` expects)."""
        path = Path(path)
        if self.kind == "value":
            head = _head(self.hf)
            weights = {k: v for k, v in self.hf.state_dict().items() if k != "score.bias"}
            self.hf.save_pretrained(path, state_dict=weights)
            head_bias = float(head.bias.detach()) if head.bias is not None else 0.0
            meta = {"kind": "value", "head_bias": head_bias, **(extra or {})}
            (path / VALUE_FILE).write_text(json.dumps(meta, indent=2))
            return
        self.hf.save_pretrained(path)
        meta = {"bias": self.bias, "gain": self.gain, **(extra or {})}
        (path / REWARD_FILE).write_text(json.dumps(meta, indent=2))

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw head output at every position. (B, T)"""
        base = self.hf.base_model
        out = base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
        )
        return _head(self.hf)(out.last_hidden_state).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Raw (unnormalised) score at the last real token, for left or right padding (B,); with
        ``per_token`` the head at every position (B, T), as :meth:`token_values` (a value model under DDP
        must be called through ``forward`` for its gradients to be synced)."""
        values = self.token_values(input_ids, attention_mask)
        if per_token:
            return values
        idx = last_token_index(attention_mask)
        return values.gather(1, idx[:, None]).squeeze(1)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return self.gain * (raw + self.bias)
