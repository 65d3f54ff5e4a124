"""Loading any Hugging Face causal LM for tiller, and the scalar-head models (reward and value).

Every model goes through :func:`load_tokenizer`, which guarantees the chat markers of ``tiller.chat`` are
single special tokens and that the pad token is not EOS (a pad equal to EOS makes a model never learn
to stop: its EOS labels get masked as padding).
"""

from __future__ import annotations

import json
from pathlib import Path

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
    ids = [tok.convert_tokens_to_ids(END)]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def _fit_embeddings(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    if model.get_input_embeddings().weight.shape[0] < len(tok):
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id


def default_device() -> str:
    """Where a model goes when nobody says: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(
    name_or_path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local folder or a hub name, ready for the chat format.
    ``device`` None means :func:`default_device`."""
    tok = load_tokenizer(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    _fit_embeddings(model, tok)
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(device or default_device())
    return model, tok


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, so left padding does not shift them. (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ScalarModel(nn.Module):
    """The LM with its unembedding replaced by a scalar head (InstructGPT section 3.5).

    Used as the reward model (read at the last real token) and as the value model (read at every
    token). Stored as an ``AutoModelForSequenceClassification`` folder with ``num_labels=1`` so other
    tools (e.g. TRL) load it too; the normalisation ``score = gain * (raw + bias)`` lives beside it in
    ``tiller-reward.json`` and is applied whenever the model scores.
    """

    def __init__(self, hf: PreTrainedModel, bias: float = 0.0, gain: float = 1.0):
        super().__init__()
        self.hf = hf
        self.bias = bias
        self.gain = gain

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, tok: PreTrainedTokenizerBase | None = None) -> ScalarModel:
        """From an RM folder, or from any causal LM folder (a fresh, zero-initialised head)."""
        tok = tok or load_tokenizer(name_or_path)
        hf = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), num_labels=1)
        _fit_embeddings(hf, tok)
        norm = Path(name_or_path) / REWARD_FILE
        if norm.is_file():
            meta = json.loads(norm.read_text())
            return cls(hf, meta.get("bias", 0.0), meta.get("gain", 1.0))
        head = hf.score if hasattr(hf, "score") else None
        if isinstance(head, nn.Linear):  # start at 0 so early rewards don't swamp the KL term
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
        return cls(hf)

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        path = Path(path)
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
        return self.hf.score(out.last_hidden_state).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) score at the last real token, for left or right padding. (B,)"""
        values = self.token_values(input_ids, attention_mask)
        idx = last_token_index(attention_mask)
        return values.gather(1, idx[:, None]).squeeze(1)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return self.gain * (raw + self.bias)
