"""Loading any Hugging Face causal LM for tiller, and the scalar-head models (reward and value).

Every model goes through :func:`load_tokenizer`, which guarantees the chat markers of ``tiller.chat`` are
single special tokens and that the pad token is not EOS (a pad equal to EOS makes a model never learn
to stop: its EOS labels get masked as padding). Any folder a loader reads may be a LoRA adapter folder
(``tiller.adapters``): it comes back as a plain model with the adapter merged, so no user sees peft.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from peft import PeftModel
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tiller.adapters import (
    LoraConfig,
    adapter_base,
    add_adapter,
    is_adapter_folder,
    load_adapter,
    merged_copy,
    save_model,
    trained_copy,
    unwrap,
    using_adapter,
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


def _tokenizer_source(name_or_path: str | Path) -> str | Path:
    """Where a model's tokenizer is: an adapter folder saved without one uses its base's."""
    if is_adapter_folder(name_or_path) and not (Path(name_or_path) / "tokenizer_config.json").is_file():
        return _tokenizer_source(adapter_base(name_or_path))
    return name_or_path


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer with the chat markers as special tokens and a pad token distinct from EOS."""
    tok = AutoTokenizer.from_pretrained(str(_tokenizer_source(name_or_path)))
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


def added_token_ids(name_or_path: str | Path, tok: PreTrainedTokenizerBase) -> list[int]:
    """Ids in ``tok`` that the checkpoint's own tokenizer lacks (what :func:`load_tokenizer` added): their
    embedding rows were never trained, so a LoRA must train them (``adapters.apply_lora(new_token_ids=)``).
    Empty for tiller's own checkpoints and for a folder saved with ``tok``, e.g. an SFT adapter."""
    own = AutoTokenizer.from_pretrained(str(_tokenizer_source(name_or_path))).get_vocab()
    return sorted(i for t, i in tok.get_vocab().items() if t not in own)


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
    ``device`` None means :func:`default_device`. An adapter folder is loaded onto its base and merged."""
    tok = load_tokenizer(name_or_path)
    model = _causal_lm(name_or_path, tok, load_dtype(trainable, dtype))
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), so mypy sees the unbound
    # signature and takes the device for ``self``
    model.to(device or default_device())  # type: ignore[arg-type]
    if not trainable:
        model.eval().requires_grad_(False)
    return model, tok


def _causal_lm(name_or_path: str | Path, tok: PreTrainedTokenizerBase, dtype: torch.dtype | str) -> PreTrainedModel:
    """The causal LM in a folder; an adapter folder's base is loaded (recursively), then the adapter merged."""
    if is_adapter_folder(name_or_path):
        return load_adapter(_causal_lm(adapter_base(name_or_path), tok, dtype), name_or_path)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    _fit_embeddings(model, tok)
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (Hugging Face's
    gradient checkpointing, non-reentrant). For a :class:`ScalarModel` it applies to its transformer. Only
    training-mode forwards are affected; sampling (eval mode) keeps its KV cache."""
    hf = cast(PreTrainedModel, unwrap(model.hf if isinstance(model, ScalarModel) else model))
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


def _score(hf: nn.Module) -> nn.Module:
    """The scalar head to call: the ``score`` Linear, or under LoRA peft's wrapper of it, which holds the
    trained copy and the original (used while the adapter is disabled)."""
    head = getattr(unwrap(hf), "score", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(hf).__name__}: expected a `score` head")
    return head


def _head(hf: nn.Module) -> nn.Linear:
    """The scalar head's Linear (``score`` in Llama, Qwen, GPT-2, ...); under LoRA the trained copy."""
    head = trained_copy(_score(hf))
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


def _head_bias(hf: nn.Module) -> float:
    head = _head(hf)
    return float(head.bias.detach()) if head.bias is not None else 0.0


def _scalar_hf(name_or_path: str | Path, tok: PreTrainedTokenizerBase, dtype: torch.dtype | str) -> PreTrainedModel:
    """The sequence-classification model in a folder. An adapter folder (an RM's, a value model's, or a
    policy's, whose LoRA fits the same transformer) is loaded onto its base, recursively, and merged."""
    if is_adapter_folder(name_or_path):
        hf = _scalar_hf(adapter_base(name_or_path), tok, dtype)
        if (Path(name_or_path) / VALUE_FILE).is_file():
            _with_head_bias(hf)  # the saved head has a bias the architecture's lacks
        return load_adapter(hf, name_or_path)
    hf = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), num_labels=1, dtype=dtype)
    _fit_embeddings(hf, tok)
    return hf


class ScalarModel(nn.Module):
    """The LM with its unembedding replaced by a scalar head (InstructGPT section 3.5).

    Used as the reward model (read at the last real token) and as the value model (read at every
    token). Stored as an ``AutoModelForSequenceClassification`` folder with ``num_labels=1`` so other
    tools (e.g. TRL) load it too. A reward model (``kind="reward"``) keeps its normalisation
    ``score = gain * (raw + bias)`` beside it in ``tiller-reward.json`` and applies it whenever it scores.
    A value model (``kind="value"``, see :meth:`value_from`) has that normalisation folded into its head
    and is marked by ``tiller-value.json`` instead, so nothing mistakes it for a reward model.
    """

    def __init__(self, hf: PreTrainedModel | PeftModel, bias: float = 0.0, gain: float = 1.0, kind: str = "reward"):
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
        """From an RM folder, a value folder, or any causal LM folder (a fresh, zero-initialised head); any
        of them may be an adapter folder, returned merged (see :func:`_scalar_hf`).

        ``trainable`` loads in float32; ``trainable=False`` keeps the checkpoint's dtype and returns the
        model frozen (eval mode, no gradients), e.g. an RM that only scores (see :func:`load_dtype`)."""
        tok = tok or load_tokenizer(name_or_path)
        hf = _scalar_hf(name_or_path, tok, load_dtype(trainable, dtype))
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
        head = _with_head_bias(cast(PreTrainedModel, model.hf))  # a loaded model is plain: adapters merged
        if model.kind == "reward":
            with torch.no_grad():
                head.weight.mul_(model.gain)
                head.bias.add_(model.bias).mul_(model.gain)
        model.bias, model.gain, model.kind = 0.0, 1.0, "value"
        return model

    def save_pretrained(self, path: str | Path, extra: dict | None = None, *, merge: bool = False,
                        base: str | Path | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """An RM folder with ``tiller-reward.json``, or for a value model one with ``tiller-value.json``
        whose head bias is in the marker (it is not in the architecture's head, so the weights file
        holds only what a plain ``from_pretrained`` expects). Under LoRA the folder holds the adapter and
        the head (``adapters.save_model``; ``base`` as there), or with ``merge`` the merged weights.
        ``state_dict``: the ``.hf`` model's whole weights when they are not on this process (an FSDP-sharded
        model's, gathered with ``sharding.full_state_dict``); not with LoRA."""
        path = Path(path)
        if isinstance(self.hf, PeftModel):
            if state_dict is not None:
                raise ValueError("ScalarModel.save_pretrained: state_dict is not supported for a LoRA model")
            if merge:
                ScalarModel(merged_copy(self.hf), self.bias, self.gain, self.kind).save_pretrained(path, extra)
                return
            save_model(self.hf, path, base=base)  # the adapter and the head (peft's modules_to_save)
            if self.kind == "value":
                meta = {"kind": "value", "head_bias": _head_bias(self.hf), **(extra or {})}
                (path / VALUE_FILE).write_text(json.dumps(meta, indent=2))
            else:
                meta = {"bias": self.bias, "gain": self.gain, **(extra or {})}
                (path / REWARD_FILE).write_text(json.dumps(meta, indent=2))
            return
        if self.kind == "value":
            weights = state_dict if state_dict is not None else self.hf.state_dict()
            head_bias = float(weights["score.bias"]) if "score.bias" in weights else 0.0
            self.hf.save_pretrained(path, state_dict={k: v for k, v in weights.items() if k != "score.bias"})
            meta = {"kind": "value", "head_bias": head_bias, **(extra or {})}
            (path / VALUE_FILE).write_text(json.dumps(meta, indent=2))
            return
        self.hf.save_pretrained(path, state_dict=state_dict)
        meta = {"bias": self.bias, "gain": self.gain, **(extra or {})}
        (path / REWARD_FILE).write_text(json.dumps(meta, indent=2))

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw head output at every position. (B, T)"""
        hf = cast(PreTrainedModel, unwrap(self.hf))  # a peft wrapper's own base_model is peft's LoraModel
        out = hf.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
        )
        return _score(self.hf)(out.last_hidden_state).squeeze(-1).float()

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


class SharedValueModel(nn.Module):
    """A value model that is a second LoRA adapter plus a scalar head on the policy's frozen backbone, so
    policy, reference (``adapters.adapter_disabled``) and value share one copy of the weights.

    Same calls as a value :class:`ScalarModel` (``token_values``, ``forward(per_token=)``). The backbone is
    not a submodule: ``parameters()`` is the head alone, and :meth:`trainable_parameters` adds the value
    adapter (which lives inside the policy) for the value optimiser. Its forwards run under
    ``adapters.using_adapter``, which keeps the policy adapter's gradients alive across the switch.

    Not with gradient checkpointing: the backward recomputes each block under whichever adapter is active
    then, so the value adapter's gradients came out silently wrong (measured); a training forward raises."""

    kind = "value"
    bias, gain = 0.0, 1.0

    def __init__(self, policy: PeftModel, cfg: LoraConfig, name: str = "value", new_token_ids: Sequence[int] = ()):
        super().__init__()
        add_adapter(policy, name, cfg, new_token_ids=new_token_ids)
        self._policy = [policy]  # a list, so nn.Module does not register the policy as ours
        self.name = name
        weight = cast(torch.Tensor, cast(PreTrainedModel, unwrap(policy)).get_input_embeddings().weight)
        self.head = nn.Linear(weight.shape[1], 1, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():  # start at 0, as a value model from a policy does
            self.head.weight.zero_()
            self.head.bias.zero_()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The value adapter's weights (and token rows) and the head: what the value optimiser holds."""
        adapter = [p for n, p in self._policy[0].named_parameters()
                   if p.requires_grad and (f".{self.name}." in n or n.endswith(f".{self.name}"))]
        return [*adapter, *self.head.parameters()]

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head output at every position, read from the backbone under the value adapter. (B, T)"""
        policy = self._policy[0]
        backbone = cast(PreTrainedModel, unwrap(policy)).base_model
        if policy.training and torch.is_grad_enabled() and getattr(backbone, "gradient_checkpointing", False):
            raise RuntimeError("a shared-backbone value model cannot train with gradient checkpointing: the "
                               "backward would recompute its blocks under the policy's adapter")
        with using_adapter(policy, self.name):
            out = backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
            )
        return self.head(out.last_hidden_state).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """The value at the last real token (B,), or with ``per_token`` at every position (B, T)."""
        values = self.token_values(input_ids, attention_mask)
        if per_token:
            return values
        return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
