"""FSDP2 sharded data parallelism: each rank holds 1/N of every weight, gradient and optimiser state.

Parallelism is applied to a model, never woven into it (torchtitan): :func:`shard` calls ``fully_shard``
on every transformer block, then on the root, of a plain Hugging Face model, a wrapper with ``.hf`` (the
scalar models) or a peft model. The same code runs on GPUs (NCCL) and on CPUs (gloo); accelerate's FSDP
plugin does not, it trains plain DDP on a CPU without a word. A sharded model does not go through
``accelerate.prepare`` (that would wrap it in DDP): FSDP2 averages the gradients over the ranks itself, as
DDP does, so ``distributed.global_share`` weights a rank's loss the same way.

Order: load the same weights on every rank, :func:`shard`, then build the optimiser (``fully_shard``
replaces the parameters). Sample inside :func:`gathered`, clip with :func:`clip_grad_norm_`, write a
model folder with :func:`save_pretrained` and resumable state with :func:`save_state`. Weights stay fp32;
bf16 compute comes from ``torch.autocast`` (``training.autocast``), which FSDP2 leaves alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import warnings
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from tiller import distributed
from tiller.runs import LOOP_STATE

# methods other than ``forward`` that callers run on a root module (ScalarModel.token_values, rl.py): FSDP2
# must gather the root's own weights around them as it does around forward
FORWARD_METHODS = ("token_values",)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


class ShardingError(RuntimeError):
    """Sharding was asked for where it cannot happen: no process group, no transformer blocks."""


def mesh() -> DeviceMesh:
    """The 1-D mesh of all ranks: on the GPUs under NCCL, on the CPU under gloo."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ShardingError("sharding needs an initialised process group: launch with torchrun and call "
                            "torch.distributed.init_process_group first (backend nccl on GPUs, gloo on CPUs)")
    backend = str(dist.get_backend())
    if "nccl" in backend and torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return init_device_mesh("cuda", (dist.get_world_size(),))
    if "gloo" not in backend:
        raise ShardingError(f"process group backend {backend!r}: CPU sharding needs gloo")
    return init_device_mesh("cpu", (dist.get_world_size(),))


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: modules whose class a Hugging Face model inside it names in
    ``_no_split_modules`` (``LlamaDecoderLayer``, ``GPT2Block``, ``Qwen2DecoderLayer``, ...)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    # by the class's ancestry: fully_shard turns a LlamaDecoderLayer into an FSDPLlamaDecoderLayer
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard(model: nn.Module, *, reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model`` in place over all ranks (``fully_shard`` per block, then the root); returns it.

    Every rank must hold the same weights before (load the same folder, or seed the init). Each block's
    weights are all-gathered for its forward and freed after it (``reshard_after_forward=False`` keeps them
    until the backward: less communication, more memory). Embeddings and the LM head sit in the root's
    group, so tied embeddings stay tied. Build the optimiser afterwards: the parameters are replaced."""
    if is_sharded(model):
        raise ShardingError(f"{type(model).__name__} is already sharded")
    parts = blocks(model)
    if not parts:
        raise ShardingError(f"{type(model).__name__}: found no transformer blocks to shard (no Hugging Face "
                            "model with _no_split_modules inside)")
    device_mesh = mesh()
    for block in parts:
        fully_shard(block, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
    for name in FORWARD_METHODS:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return model


def _fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _reshard_setting(m: FSDPModule) -> tuple[bool, bool | None]:
    """(reshards after forward, left to FSDP's default): there is no public getter (torch 2.13). FSDP2
    keeps the first as "a mesh to reshard to after forward"; the second lets the root keep its weights
    after forward (they are needed at once by the backward)."""
    state = m._get_fsdp_state()
    return (any(g.post_forward_mesh_info is not None for g in state._fsdp_param_groups),
            state._auto_reshard_after_forward)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every weight of a sharded ``model`` is whole on every rank: all-gathered once on entry,
    freed on exit. Forwards then communicate nothing, so a decode loop does not all-gather per token and
    ranks may run different numbers of forwards (sampling stops at different lengths) without hanging.
    Every rank must enter and leave together. Costs the memory of one whole model. A plain model passes."""
    mods = _fsdp_modules(model)
    before = [_reshard_setting(m) for m in mods]
    for m in mods:  # the same order on every rank: one all-gather per group
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m, (flag, auto) in zip(mods, before, strict=True):
            m.set_reshard_after_forward(flag, recurse=False)
            m._get_fsdp_state()._auto_reshard_after_forward = auto
            m.reshard()


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their total 2-norm over all ranks is at most ``max_norm``; returns the
    norm before clipping, a plain tensor equal on every rank (the one-process norm). Sharded or not."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([cast(torch.Tensor, p.grad) for p in params], 2.0)
    if isinstance(norm, DTensor):  # partial norms of the shards: reduce them over the ranks
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict as CPU tensors on rank 0, None on the others. Every rank must call it."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()} if distributed.rank() == 0 else None
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], sd) if distributed.rank() == 0 else None


def _pretrained(model: nn.Module) -> tuple[Any, str]:
    """The object whose ``save_pretrained`` writes the folder, and its key prefix in ``model``'s state."""
    hf = getattr(model, "hf", None)
    if isinstance(hf, nn.Module):
        return hf, "hf."
    if callable(getattr(model, "save_pretrained", None)):
        return model, ""
    raise TypeError(f"{type(model).__name__}: neither a Hugging Face (or peft) model nor a wrapper with .hf")


def save_pretrained(model: nn.Module, path: str | Path, *, exclude: Collection[str] = (),
                    **kwargs: Any) -> dict[str, torch.Tensor] | None:
    """A normal model folder from rank 0 that ``from_pretrained`` loads; every rank must call it.

    For a wrapper with ``.hf`` (a ScalarModel) the folder is its ``.hf`` model's; the caller writes the
    wrapper's own files (``tiller-reward.json``) from rank 0. A peft model writes its adapter folder.
    ``exclude`` names keys left out of the weights file (a value model's ``score.bias``, kept in its
    marker file). Returns the whole state dict on rank 0 (keys as in that model, CPU tensors, excluded ones
    too), None on the others. ``kwargs`` go to ``save_pretrained``."""
    sd = full_state_dict(model)
    target, prefix = _pretrained(model)
    if sd is not None:
        sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        target.save_pretrained(str(path), state_dict={k: v for k, v in sd.items() if k not in exclude}, **kwargs)
    distributed.barrier()  # nobody reads the folder before it is whole
    return sd


# --- resumable state ------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _one_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _state(models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
           extra: Mapping[str, Stateful]) -> dict[str, Any]:
    """Everything to checkpoint, as DCP state: sharded tensors stay sharded (each rank has its part)."""
    unknown = set(optimizers) - set(models)
    if unknown:
        raise KeyError(f"optimizers {sorted(unknown)} have no model of the same name (each optimiser is "
                       "checkpointed with the model whose parameters it updates)")
    return {
        "models": {k: get_model_state_dict(m) for k, m in models.items()},
        "optimizers": {k: get_optimizer_state_dict(models[k], o) for k, o in optimizers.items()},
        "extra": {k: obj.state_dict() for k, obj in extra.items()},
    }


def save_state(folder: str | Path, models: Mapping[str, nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer], *, extra: Mapping[str, Stateful] | None = None,
               loop_state: dict[str, Any] | None = None) -> None:
    """Write a resumable checkpoint to ``folder``, replacing the last one whole: models and optimisers
    (each rank writes its shards, ``torch.distributed.checkpoint``), ``extra`` objects with
    ``state_dict``/``load_state_dict`` (schedulers, KL controllers), each rank's RNG states and the JSON
    ``loop_state``. Every rank must call it; ``folder`` must be on a file system all ranks share."""
    with distributed.shared_atomic_dir(folder) as tmp:
        with _one_process_quiet():
            dcp.save(_state(models, optimizers, extra or {}), checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rng-{distributed.rank()}.pt")
        if distributed.is_main():
            (tmp / LOOP_STATE).write_text(json.dumps(loop_state or {}))


def load_state(folder: str | Path, models: Mapping[str, nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer], *, extra: Mapping[str, Stateful] | None = None,
               ) -> dict[str, Any] | None:
    """Restore what :func:`save_state` wrote into the same (sharded the same way) models, optimisers and
    ``extra`` objects, and this rank's RNG states; returns the loop state, or None when ``folder`` holds no
    checkpoint. Every rank must call it. The optimisers may be fresh (no step taken yet)."""
    folder = Path(folder)
    if not (folder / LOOP_STATE).is_file():
        return None
    extra = extra or {}
    state = _state(models, optimizers, extra)
    with _one_process_quiet():
        dcp.load(state, checkpoint_id=str(folder))
    for k, m in models.items():
        set_model_state_dict(m, state["models"][k])
    for k, o in optimizers.items():
        set_optimizer_state_dict(models[k], o, state["optimizers"][k])
    for k, obj in extra.items():
        obj.load_state_dict(state["extra"][k])
    rng = folder / f"rng-{distributed.rank()}.pt"
    if rng.is_file():  # absent when resumed on more ranks than saved: those start from their seed
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((folder / LOOP_STATE).read_text())


class Checkpoint(distributed.CheckpointSlot):
    """``training.Checkpointer``'s interface (save / peek / load / clear) for sharded models, on
    :func:`save_state` and :func:`load_state`: accelerate's ``save_state`` knows DDP and DeepSpeed engines,
    not FSDP2 modules that never went through ``prepare``."""

    def __init__(self, folder: str | Path, models: Mapping[str, nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], extra: Mapping[str, Stateful] | None = None):
        super().__init__(folder)
        self.models, self.optimizers, self.extra = models, optimizers, extra or {}

    def save(self, loop_state: dict[str, Any]) -> None:
        save_state(self.folder, self.models, self.optimizers, extra=self.extra, loop_state=loop_state)

    def load(self) -> dict[str, Any] | None:
        state = load_state(self.folder, self.models, self.optimizers, extra=self.extra)
        distributed.barrier()
        return state
