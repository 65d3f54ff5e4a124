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
from accelerate import Accelerator  # type: ignore[import-untyped]  # accelerate ships no py.typed
from accelerate.utils import set_seed as _accelerate_set_seed  # type: ignore[import-untyped]  # as above
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # stubs are the separate types-tqdm package
from transformers import get_cosine_schedule_with_warmup

from tiller.config import ConfigError
from tiller.runs import atomic_dir

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
    """A stage was started as several processes, which it cannot yet use correctly."""


def launched_processes() -> int:
    """How many processes the launcher (``torchrun``, ``accelerate launch``) started, from ``WORLD_SIZE``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def make_accelerator(grad_accum: int = 1, cpu: bool = False) -> Accelerator:
    """The accelerator every training loop runs on; one process only, for now.

    A launch of several processes stops here with a clear error instead of training wrongly without a word:
    the stages do not yet split rollouts, reduce their statistics or write from rank 0 alone, so N ranks
    would each do the whole run and overwrite each other's files. And on a CPU, unless
    ``ACCELERATE_USE_CPU=true`` is set, ``torchrun``/``accelerate launch`` give N untied runs that
    accelerate reports as not distributed at all (measured; issue #12 builds data parallelism)."""
    n = launched_processes()
    if n > 1:
        raise LaunchError(
            f"this stage was launched as {n} processes (WORLD_SIZE={n}), but tiller's training stages run in "
            "one process for now: each rank would repeat the whole run and write the same files. Run it "
            "without torchrun / accelerate launch (one process uses every local core).")
    return Accelerator(gradient_accumulation_steps=grad_accum, cpu=cpu)  # precision: see :func:`autocast`


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
    return tqdm(total=total, desc=desc, dynamic_ncols=True, disable=disable or os.environ.get("TILLER_QUIET") == "1")


class Checkpointer:
    """Resumable training state in ``folder`` (one slot, replaced atomically)."""

    def __init__(self, folder: str | Path, accelerator: Accelerator):
        self.folder = Path(folder)
        self.acc = accelerator

    def save(self, loop_state: dict[str, Any]) -> None:
        with atomic_dir(self.folder) as tmp:
            self.acc.save_state(str(tmp), safe_serialization=False)  # torch.save: tied weights need no special case
            (tmp / LOOP_STATE).write_text(json.dumps(loop_state))

    def peek(self) -> dict[str, Any] | None:
        """The loop state of the checkpoint, without restoring anything."""
        f = self.folder / LOOP_STATE
        return json.loads(f.read_text()) if f.is_file() else None

    def load(self) -> dict[str, Any] | None:
        """Restore the registered model/optimiser/scheduler/RNG; returns the loop state, or None."""
        if not (self.folder / LOOP_STATE).is_file():
            return None
        self.acc.load_state(str(self.folder))
        return json.loads((self.folder / LOOP_STATE).read_text())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
