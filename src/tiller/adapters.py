"""LoRA adapters (peft) for tiller's policies, reward models and value models.

A LoRA model trains a few low-rank matrices beside frozen weights (Hu et al. 2021), so a stage keeps one
copy of the base in memory and saves a folder of megabytes. Three rules shape this module:

- The head never gets a LoRA: the LM head is left out (peft's ``all-linear`` does that) and a scalar
  model's ``score`` head is trained in full and saved with the adapter (``head="score"``).
- Token ids the tokenizer added to the checkpoint (tiller's chat markers and pad, see
  ``models.load_tokenizer`` and ``models.added_token_ids``) have embedding rows nobody trained; a frozen
  embedding would keep them at their random resize values, so their rows train and are saved with the
  adapter (peft's ``trainable_token_indices``, in the input embedding and, when untied, the LM head).
- Every reader of a saved adapter folder gets a plain merged model back (``models.load_policy``,
  ``ScalarModel.from_pretrained``), so samplers, servers and evaluation never see peft.

An adapter folder holds peft's files (``adapter_config.json``, ``adapter_model.safetensors``), the
caller's tokenizer, and ``tiller-adapter.json`` naming the base it needs. A later stage can train an
adapter on a model loaded from an adapter folder: its base is then that folder, loaded recursively.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from tiller.config import ConfigError, field

ADAPTER_FILE = "tiller-adapter.json"  # the base an adapter folder needs, and whether it was merged
PEFT_CONFIG = "adapter_config.json"  # peft's marker of an adapter folder
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output (LM / score) head
LORA_HELP = "LoRA adapter (r: 0 = full fine-tuning)"


@dataclass
class LoraConfig:
    r: int = field(0, help="LoRA rank; 0 turns LoRA off (full fine-tuning)")
    alpha: float = field(16.0, help="LoRA scale: the update B @ A is multiplied by alpha / r")
    dropout: float = field(0.0, help="dropout on the LoRA branch's input")
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR],
                                      help="modules that get a LoRA (name suffixes), or ['all-linear']: every "
                                           "linear layer but the LM / score head")
    merge: bool = field(False, help="save merged full weights instead of the adapter alone")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> None:
        if self.r < 0:
            raise ConfigError("lora.r must be >= 0 (0 = full fine-tuning)")
        if not 0 <= self.dropout < 1:
            raise ConfigError("lora.dropout must be in [0, 1)")
        if self.enabled and not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name the modules that get a LoRA, or all-linear")
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError("lora.target_modules: all-linear already names every linear layer; give it alone")


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None) if module is not None else None


def _peft_config(model: nn.Module, cfg: LoraConfig, head: str | None, new_token_ids: Sequence[int]) -> PeftLoraConfig:
    hf = cast(PreTrainedModel, unwrap(model))
    out_name = _module_name(hf, hf.get_output_embeddings())
    if head is None and out_name is None:
        raise ValueError(f"{type(hf).__name__} has no LM head: pass its scalar head, e.g. head='score'")
    tokens: dict[str, list[int]] | None = None
    if new_token_ids:
        ids = sorted(set(int(i) for i in new_token_ids))
        embed_name = cast(str, _module_name(hf, hf.get_input_embeddings()))
        # the LM head too: an untied head keeps random rows for <|end|> and the model never learns to stop;
        # a tied one is the same rows, and peft ties them when both are named with the same ids
        tokens = {name: ids for name in (embed_name, out_name) if name is not None}
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # typed int in peft; used as alpha / r, any float works
        lora_dropout=cfg.dropout,
        target_modules=ALL_LINEAR if cfg.target_modules == [ALL_LINEAR] else list(cfg.target_modules),
        exclude_modules=[out_name] if out_name else None,  # an explicit list must not reach the LM head either
        modules_to_save=[head] if head else None,
        trainable_token_indices=tokens,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in hf.modules()),  # GPT-2's transposed Linear
    )


def apply_lora(
    model: PreTrainedModel, cfg: LoraConfig, *, head: str | None = None, new_token_ids: Sequence[int] = ()
) -> PeftModel:
    """``model`` wrapped in a peft LoRA model in which only the adapters require grad, plus ``head`` (a
    scalar model's ``"score"``, trained in full) and the embedding rows of ``new_token_ids``.

    ``new_token_ids``: ids the checkpoint's embedding never trained (``models.added_token_ids``); their
    input-embedding rows, and the LM head's when it is not tied to them, train and are saved with the
    adapter. ``model`` itself is changed (LoRA layers are injected into it) and must not be used apart."""
    if not cfg.enabled:
        raise ValueError("apply_lora with lora.r == 0: LoRA is off, train the model itself")
    cfg.validate()
    # adapter name "default"; peft freezes every base weight
    return cast(PeftModel, get_peft_model(model, _peft_config(model, cfg, head, new_token_ids)))


def add_adapter(model: PeftModel, name: str, cfg: LoraConfig, *, new_token_ids: Sequence[int] = ()) -> None:
    """A second, trainable adapter ``name`` on the same frozen backbone (e.g. a value model's); the active
    adapter stays as it was. Switch with :func:`using_adapter`, never with peft's ``set_adapter`` alone."""
    cfg.validate()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # head=None is allowed on a causal LM; a value head lives outside peft (models.SharedValueModel)
    model.add_adapter(name, _peft_config(model, cfg, None, new_token_ids))
    model.set_requires_grad(name, True)
    _require_grad(trainable)


@contextmanager
def using_adapter(model: PeftModel, name: str) -> Iterator[None]:
    """Forwards inside run adapter ``name``; the previous one is active again after.

    peft's ``set_adapter`` turns off requires_grad of every inactive adapter. A graph built before the
    switch (a policy forward, then the value forward) then gives that adapter no gradient in a backward of
    the summed losses, with no warning: autograd skips leaves that no longer require grad. Here every
    parameter that required grad before the switch still does inside and after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = model.active_adapter
    model.set_adapter(name)
    _require_grad(trainable)
    try:
        yield
    finally:
        model.set_adapter(before)
        _require_grad(trainable)


def _require_grad(params: list[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (with the LoRA layers still in it), else ``model``."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def trained_copy(module: nn.Module) -> nn.Module:
    """The module a forward uses: inside peft's wrapper of a fully trained module (``modules_to_save``,
    e.g. a scalar head) the active adapter's copy, else ``module`` itself."""
    if isinstance(module, ModulesToSaveWrapper):
        return cast(nn.Module, module.modules_to_save[module.active_adapters[0]])
    return module


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should hold: with LoRA, the adapters, the head and the new token rows."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Forwards inside run the base model alone (LoRA, trained head and token rows off): the PPO reference
    policy without a second copy of the weights. Run it in eval mode and under ``torch.no_grad()``."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"{type(model).__name__} has no adapter to disable: keep a separate reference model")
    with model.disable_adapter():
        yield


def _base_name(model: nn.Module) -> str:
    base = getattr(unwrap(model).config, "name_or_path", "")
    if not base:
        raise ValueError("the model does not know which base it was loaded from: pass base=")
    return str(base)


def save_model(model: nn.Module, path: str | Path, *, merge: bool = False, base: str | Path | None = None) -> None:
    """Save a peft model as an adapter folder (peft's files + ``tiller-adapter.json``), or with ``merge``
    as a plain ``save_pretrained`` folder of merged weights; a model without adapters is saved as is.

    ``base`` is what the adapter needs under it, by default the path the model was loaded from (after
    ``models.load_policy`` of an adapter folder, that folder). ``model`` is left unchanged (a merge works on
    a copy, which costs one more copy of the weights while it saves). The caller saves the tokenizer."""
    path = Path(path)
    if not isinstance(model, PeftModel):
        cast(PreTrainedModel, model).save_pretrained(path)
        return
    base = str(base) if base is not None else _base_name(model)
    if merge:
        merged_copy(model).save_pretrained(path)
    else:
        model.peft_config[model.active_adapter].base_model_name_or_path = base
        # the new rows are in the adapter (trainable_token_indices); without this peft saves whole
        # embeddings whenever the vocabulary was resized, and asks the hub about the base
        model.save_pretrained(str(path), save_embedding_layers=False, selected_adapters=[model.active_adapter])
    meta = {"base_model": base, "merged": merge}
    if Path(base).is_dir():  # a run folder may move: find a local base beside the adapter too
        meta["base_model_relative"] = os.path.relpath(Path(base).resolve(), path.resolve())
    (path / ADAPTER_FILE).write_text(json.dumps(meta, indent=2))


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain model with the adapter merged into its weights; ``model`` keeps training unchanged (merging
    in place and unmerging would not give the base weights back bit for bit)."""
    active = model.active_adapter  # another adapter on the backbone (a shared value model's) is left out
    return cast(PreTrainedModel, copy.deepcopy(model).merge_and_unload(adapter_names=[active]))


def is_adapter_folder(path: str | Path) -> bool:
    """A folder of adapter weights (not a merged one): loaders must load its base first."""
    return (Path(path) / PEFT_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder needs: ``tiller-adapter.json``'s (as given when saved, else found
    relative to the adapter folder), or peft's ``base_model_name_or_path`` for an adapter saved elsewhere."""
    path = Path(path)
    meta_file = path / ADAPTER_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        relative = meta.get("base_model_relative")
        if not Path(meta["base_model"]).exists() and relative and (path / relative).is_dir():
            return str((path / relative).resolve())
        return str(meta["base_model"])
    base = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base:
        raise ValueError(f"{path}: the adapter names no base model")
    return str(base)


def load_adapter(model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """``model`` (the base, embeddings already resized to the tokenizer) with the adapter folder merged in:
    a plain model again, which now names ``path`` as where it came from.

    A policy adapter also loads onto a scalar model (a reward or value model initialised from an SFT
    adapter): its LM-head token rows have no module there and are dropped."""
    config = PeftConfig.from_pretrained(str(path))
    names = [n for n, _ in model.named_modules()]
    tokens, excluded = getattr(config, "trainable_token_indices", None), getattr(config, "exclude_modules", None)
    if isinstance(tokens, dict):
        kept = {k: v for k, v in tokens.items() if any(n.endswith(k) for n in names)}
        config.trainable_token_indices = kept or None  # type: ignore[attr-defined]
    if isinstance(excluded, (list, set)):  # the LM head a scalar model lacks: peft warns of a no-op
        config.exclude_modules = [e for e in excluded if any(n.endswith(e) for n in names)] or None  # type: ignore[attr-defined]
    config.inference_mode = True
    flags = [p.requires_grad for p in model.parameters()]
    peft_model = PeftModel.from_pretrained(model, str(path), config=config)
    merged = cast(PreTrainedModel, peft_model.merge_and_unload())
    for p, flag in zip(merged.parameters(), flags, strict=True):  # peft froze the base; a trainable load is not
        p.requires_grad_(flag)
    merged.config.name_or_path = merged.name_or_path = str(path)
    return merged
