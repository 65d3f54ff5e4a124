"""What every training stage shares: the accelerator, optimiser and schedule, resumable checkpoints.

Loops are written on ``accelerate.Accelerator`` so the same stage runs under ``accelerate launch`` on
many devices. Checkpoints use ``Accelerator.save_state`` (model, optimiser, scheduler, RNG states) plus a
small JSON of loop state, written to a temporary folder and renamed, so a killed run resumes from the
last whole checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator, PartialState  # type: ignore[import-untyped]  # accelerate ships no py.typed
from accelerate.utils import DataLoaderConfiguration  # type: ignore[import-untyped]  # as above
from accelerate.utils import set_seed as _accelerate_set_seed  # type: ignore[import-untyped]  # as above
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # stubs are the separate types-tqdm package
from transformers import get_cosine_schedule_with_warmup

from tiller import distributed
from tiller.config import ConfigError
from tiller.distributed import launched_processes

LOOP_STATE = "loop.json"

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


def start_processes() -> None:
    """Join the data-parallel process group now (gloo on a CPU, NCCL on GPUs), for a stage whose first
    collective comes before its accelerator (best-of-n samples before it fine-tunes). Idempotent."""
    if launched_processes() > 1:
        PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(grad_accum: int = 1, cpu: bool = False) -> Accelerator:
    """The accelerator every training loop runs on: one process, or one rank of a data-parallel launch.

    Under ``torchrun`` / ``accelerate launch`` with N processes and no GPU, the CPU backend (gloo) is asked
    for explicitly: without it accelerate reports "not distributed" and the N processes train N untied
    copies without a word (measured, issue #12). A launch that still does not come out as N tied
    processes stops here with a clear error."""
    n = launched_processes()
    # split_batches: tiller's loops split each *global* batch over the ranks themselves, so a prepared
    # scheduler steps once per optimiser step (by default accelerate steps it once per rank)
    acc = Accelerator(gradient_accumulation_steps=grad_accum, cpu=cpu or (n > 1 and not torch.cuda.is_available()),
                      dataloader_config=DataLoaderConfiguration(split_batches=True))
    if acc.num_processes != n:
        raise LaunchError(
            f"this stage was launched as {n} processes (WORLD_SIZE={n}), but accelerate set up "
            f"{acc.num_processes} ({acc.distributed_type}): the ranks would train untied copies. Launch with "
            "torchrun or `accelerate launch --multi_gpu` (see docs/scaling.md).")
    return acc  # precision: see :func:`autocast`


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
    model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and norms (the usual GPT recipe)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name or "ln_" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.05):
    return get_cosine_schedule_with_warmup(opt, max(1, int(total_steps * warmup_ratio)), max(1, total_steps))


def optimizer_step(acc: Accelerator, model: torch.nn.Module, loss: torch.Tensor, opt: torch.optim.Optimizer,
                   sched=None, max_grad_norm: float = 1.0) -> None:
    """backward, clip, step, zero: the one update every supervised stage makes."""
    acc.backward(loss)
    acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)


def progress(total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar on the main process (other ranks would draw the same bar again)."""
    quiet = disable or os.environ.get("TILLER_QUIET") == "1" or not distributed.is_main()
    return tqdm(total=total, desc=desc, dynamic_ncols=True, disable=quiet)


class Checkpointer:
    """Resumable training state in ``folder`` (one slot, replaced atomically)."""

    def __init__(self, folder: str | Path, accelerator: Accelerator):
        self.folder = Path(folder)
        self.acc = accelerator

    def save(self, loop_state: dict[str, Any]) -> None:
        """Every rank calls this (each writes its own RNG state; the main process the model and optimiser),
        into one shared temporary folder that the main process renames into place once all have written."""
        tmp = self.folder.with_name(f".{self.folder.name}.tmp-ckpt")
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        self.acc.save_state(str(tmp), safe_serialization=False)  # torch.save: tied weights need no special case
        distributed.barrier()
        if distributed.is_main():
            (tmp / LOOP_STATE).write_text(json.dumps(loop_state))
            old = self.folder.with_name(f".{self.folder.name}.old-ckpt")
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()  # nobody reads or replaces the checkpoint before it is whole

    def peek(self) -> dict[str, Any] | None:
        """The loop state of the checkpoint, without restoring anything."""
        f = self.folder / LOOP_STATE
        return json.loads(f.read_text()) if f.is_file() else None

    def load(self) -> dict[str, Any] | None:
        """Restore the registered model/optimiser/scheduler/RNG; returns the loop state, or None."""
        if not (self.folder / LOOP_STATE).is_file():
            return None
        self.acc.load_state(str(self.folder))
        state = json.loads((self.folder / LOOP_STATE).read_text())
        distributed.barrier()  # every rank has read it before any may write the next one
        return state

    def clear(self) -> None:
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)
        distributed.barrier()
