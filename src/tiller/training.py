"""What every training stage shares: the accelerator, optimiser and schedule, resumable checkpoints.

Loops are written on ``accelerate.Accelerator`` so the same stage runs under ``accelerate launch`` on
many devices: plain DDP, or DeepSpeed ZeRO-2/3 from an accelerate config (``configs/accelerate/``). Under
ZeRO-3 no rank holds the whole model: every forward gathers the weights from all ranks (so every rank must
run the same number of forwards), :func:`gathered` lends the whole model for sampling, and a model folder
is written with the weights :func:`gather_weights` collects. Checkpoints use ``Accelerator.save_state``
(model, optimiser, scheduler, RNG states; DeepSpeed's own checkpoint under DeepSpeed) plus a small JSON of
loop state, written to a temporary folder and renamed, so a killed run resumes from the last whole
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator, PartialState  # type: ignore[import-untyped]  # accelerate ships no py.typed
from accelerate.state import AcceleratorState  # type: ignore[import-untyped]  # as above
from accelerate.utils import (  # type: ignore[import-untyped]  # as above
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
)
from accelerate.utils import set_seed as _accelerate_set_seed  # type: ignore[import-untyped]  # as above
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # stubs are the separate types-tqdm package
from transformers import get_cosine_schedule_with_warmup

from tiller import distributed
from tiller.config import ConfigError
from tiller.distributed import launched_processes
from tiller.runs import LOOP_STATE

Precision = Literal["no", "bf16"]
PRECISION_HELP = ("compute dtype of the training forwards: no (fp32) or bf16 (autocast; CPUs and GPUs with bf16); "
                  "the trained weights and the optimiser state stay fp32 either way")
CHECKPOINTING_HELP = "recompute activations in the backward pass: less memory for about a third more compute"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    _accelerate_set_seed(seed)


class LaunchError(RuntimeError):
    """A stage was started as several processes that are not tied into one data-parallel job."""


def deepspeed_launch() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config (accelerate tells its processes so by env)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _process_options(cpu: bool) -> dict[str, Any]:
    """How accelerate must set up the processes: on a CPU the gloo backend, asked for explicitly.

    Plain data parallelism gets it from ``cpu=True``; a DeepSpeed launch must not pass that (accelerate then
    drops DeepSpeed and trains plain DDP without a word, measured) and names the backend instead."""
    no_gpu = not torch.cuda.is_available()
    if deepspeed_launch():
        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")] if no_gpu else []}
    return {"cpu": cpu or (launched_processes() > 1 and no_gpu), "kwargs_handlers": []}


def start_processes() -> None:
    """Join the data-parallel process group now (gloo on a CPU, NCCL on GPUs), for a stage whose first
    collective comes before its accelerator (best-of-n samples before it fine-tunes). Idempotent."""
    if launched_processes() > 1:
        opts = _process_options(cpu=False)
        PartialState(cpu=opts["cpu"], **{k: v for h in opts["kwargs_handlers"] for k, v in h.to_kwargs().items()})


def make_accelerator(grad_accum: int = 1, cpu: bool = False) -> Accelerator:
    """The accelerator every training loop runs on: one process, or one rank of a data-parallel launch.

    Under ``torchrun`` / ``accelerate launch`` with N processes and no GPU, the CPU backend (gloo) is asked
    for explicitly: without it accelerate reports "not distributed" and the N processes train N untied
    copies without a word (measured, issue #12). A launch that still does not come out as N tied
    processes stops here with a clear error. Under a DeepSpeed config the engine takes the optimiser step
    (:func:`optimizer_step`); tiller feeds it its own batches, so DeepSpeed's micro-batch size, which it
    only books, is set to 1 when the config leaves it to accelerate ("auto")."""
    n = launched_processes()
    # split_batches: tiller's loops split each *global* batch over the ranks themselves, so a prepared
    # scheduler steps once per optimiser step (by default accelerate steps it once per rank)
    acc = Accelerator(gradient_accumulation_steps=grad_accum, **_process_options(cpu),
                      dataloader_config=DataLoaderConfiguration(split_batches=True))
    deepspeed = deepspeed_launch()
    if acc.num_processes != n or deepspeed != (acc.distributed_type == DistributedType.DEEPSPEED):
        raise LaunchError(
            f"this stage was launched as {n} processes (WORLD_SIZE={n}{', DeepSpeed' if deepspeed else ''}), but "
            f"accelerate set up {acc.num_processes} ({acc.distributed_type}): the ranks would train untied copies. "
            "Launch with torchrun or `accelerate launch --config_file configs/accelerate/...` (docs/scaling.md).")
    if acc.distributed_type == DistributedType.DEEPSPEED:
        ds_config = acc.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            ds_config["train_micro_batch_size_per_gpu"] = 1
    return acc  # precision: see :func:`autocast`


def zero_stage(acc: Accelerator) -> int:
    """The DeepSpeed ZeRO stage the accelerator trains with; 0 without DeepSpeed."""
    plugin = acc.state.deepspeed_plugin if acc.distributed_type == DistributedType.DEEPSPEED else None
    return int(plugin.zero_stage) if plugin is not None else 0


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a training forward runs in: bf16 autocast for ``precision="bf16"``, else nothing.

    ``torch.autocast`` rather than ``Accelerator(mixed_precision=...)``: accelerate keeps that setting in a
    process-wide singleton that refuses to change, and ``tiller run`` runs every stage in one process, each
    with its own setting. fp16 is not offered: it needs loss scaling, and bf16 does not."""
    dev = torch.device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision=bf16: this GPU has no bf16; use mixed_precision=no")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95),
    exclude: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and norms (the usual GPT recipe). An empty group is left out
    (LoRA trains matrices only): DeepSpeed drops it, and a scheduler made for two groups would then fail.
    ``exclude``: trainable parameters inside ``model`` that another optimiser owns (a value adapter on the
    policy's backbone)."""
    others = {id(p) for p in exclude}
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in others:
            (no_decay if p.ndim < 2 or "norm" in name or "ln_" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=1e-8)


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.05):
    return get_cosine_schedule_with_warmup(opt, max(1, int(total_steps * warmup_ratio)), max(1, total_steps))


def optimizer_step(acc: Accelerator, model: torch.nn.Module, loss: torch.Tensor, opt: torch.optim.Optimizer,
                   sched=None, max_grad_norm: float = 1.0) -> None:
    """backward, clip, step, zero: the one update every supervised stage makes.

    Under DeepSpeed the engine clips, steps and zeroes inside ``acc.backward``, and the optimiser's own
    ``step`` and ``zero_grad`` are accelerate's no-ops; it clips at its config's ``gradient_clipping``, which
    must be ``max_grad_norm`` for the run to be the one a single process makes. The scheduler is tiller's
    (DeepSpeed does not know it) and steps here as everywhere."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        clip = acc.deepspeed_engine_wrapped.engine.gradient_clipping()
        if clip != max_grad_norm:
            raise ConfigError(f"the DeepSpeed config clips gradients at {clip}, this stage at max_grad_norm="
                              f"{max_grad_norm}: set gradient_clipping: {max_grad_norm} in the accelerate config")
    acc.backward(loss)
    acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)


def _saved_keys(acc: Accelerator, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` keyed as the model's ``save_pretrained`` expects: a wrapper with ``.hf`` (a ScalarModel)
    writes its ``.hf`` model's weights."""
    if isinstance(getattr(acc.unwrap_model(model), "hf", None), torch.nn.Module):
        return {k.removeprefix("hf."): v for k, v in state.items() if k.startswith("hf.")}
    return state


def snapshot_weights(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """A copy of a prepared model's whole weights, CPU tensors on the main process (None on the others),
    keyed as its ``save_pretrained`` expects (a ScalarModel's ``.hf`` keys); tied weights stay one tensor.
    Under ZeRO-3 they are gathered from all ranks, so every rank must call it."""
    if zero_stage(acc) == 3:
        state = acc.get_state_dict(model)  # DeepSpeed's consolidated state dict: whole on rank 0, None elsewhere
    else:
        state = acc.unwrap_model(model).state_dict() if distributed.is_main() else None
    if state is None or not distributed.is_main():
        return None
    copies: dict[tuple, torch.Tensor] = {}  # one copy of a tensor that several keys share (tied embeddings)
    for v in state.values():
        if (v.data_ptr(), v.shape, v.dtype) not in copies:
            copies[v.data_ptr(), v.shape, v.dtype] = v.detach().to("cpu", copy=True)
    return _saved_keys(acc, model, {k: copies[v.data_ptr(), v.shape, v.dtype] for k, v in state.items()})


def gather_weights(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The ``state_dict`` to pass to ``save_pretrained`` for a prepared model: under ZeRO-3, where no rank
    holds the whole model, its weights gathered onto the main process (:func:`snapshot_weights`); None
    wherever ``save_pretrained`` can read the model itself (one process, DDP, ZeRO-2). Every rank must call
    it, before the main process writes."""
    return snapshot_weights(acc, model) if zero_stage(acc) == 3 else None


@contextlib.contextmanager
def loading_whole() -> Iterator[None]:
    """Models made inside load whole, even once a ZeRO-3 accelerator exists. Accelerate then registers its
    DeepSpeed config with transformers, which creates every model loaded later already partitioned
    (``deepspeed.zero.Init``): edits right after loading (a fresh reward head zeroed) would reach nothing,
    and a model no engine prepares (a reward model that only scores) would have no weights at all. ZeRO-3
    partitions a trained model when the accelerator prepares it (``zero3_init_flag: false``)."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        AcceleratorState().deepspeed_plugin.set_deepspeed_weakref()


@contextlib.contextmanager
def gathered(acc: Accelerator, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The unwrapped model with its whole weights on every rank, for forwards whose number differs between
    ranks (sampling stops when the answers end). Under ZeRO-3 the weights are gathered once and its
    per-forward gathering hooks are off inside (DeepSpeed's ``unwrap_model_for_generation``), so this costs
    the whole model's memory on every rank; elsewhere the model is whole already. Every rank must enter."""
    if zero_stage(acc) != 3:
        yield acc.unwrap_model(model)
        return
    from deepspeed.runtime.zero import unwrap_model_for_generation  # type: ignore[import-untyped]  # no py.typed

    with unwrap_model_for_generation(model):
        yield acc.unwrap_model(model)


def progress(total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar on the main process (other ranks would draw the same bar again)."""
    quiet = disable or os.environ.get("TILLER_QUIET") == "1" or not distributed.is_main()
    return tqdm(total=total, desc=desc, dynamic_ncols=True, disable=quiet)


class Checkpointer(distributed.CheckpointSlot):
    """Resumable training state in ``folder`` (one slot, replaced atomically) through accelerate."""

    def __init__(self, folder: str | Path, accelerator: Accelerator):
        super().__init__(folder)
        self.acc = accelerator

    def save(self, loop_state: dict[str, Any]) -> None:
        """Every rank calls this (each writes its own RNG state; the main process the model and optimiser, or
        under DeepSpeed each rank its partition too), into one shared temporary folder that the main process
        renames into place once all have written."""
        with distributed.shared_atomic_dir(self.folder) as tmp:
            self.acc.save_state(str(tmp), safe_serialization=False)  # torch.save: tied weights need no special case
            if distributed.is_main():
                (tmp / LOOP_STATE).write_text(json.dumps(loop_state))

    def load(self) -> dict[str, Any] | None:
        """Restore the registered model/optimiser/scheduler/RNG; returns the loop state, or None."""
        if not (self.folder / LOOP_STATE).is_file():
            return None
        self.acc.load_state(str(self.folder))
        state = json.loads((self.folder / LOOP_STATE).read_text())
        distributed.barrier()  # every rank has read it before any may write the next one
        return state
