"""Several processes of one stage (data parallel): who this process is, its share of the work, and the
statistics every rank must agree on.

Under ``torchrun`` or ``accelerate launch`` each rank holds the whole model (or its FSDP2 shard, see
``tiller.sharding``), takes its share of every *global* batch, and DDP averages the gradients. A stage is
then the same computation as one process with the same global batch when (a) each rank's loss is its part
of the global mean times the number of ranks (DDP divides by it), which :func:`global_share` gives, and
(b) every statistic that mixes examples (advantage whitening, the KL controller, running moments, RLOO and
GRPO groups) is computed over all ranks: :func:`all_sum` and :func:`gather_cat`. Only the main process
writes files. With one process every function here is the identity, so stages call them unconditionally.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tiller.runs import LOOP_STATE

T = TypeVar("T")
N = TypeVar("N", float, torch.Tensor)


def active() -> bool:
    """True when this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank; before the process group is up (a stage sets it up with its accelerator), the
    launcher's ``RANK``, so a tracker made early is still quiet on the other ranks."""
    if active():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    """The number of ranks; before the process group is up, the launcher's ``WORLD_SIZE`` (as :func:`rank`)."""
    return dist.get_world_size() if active() else launched_processes()


def is_main() -> bool:
    """The process that writes checkpoints, manifests, metrics and reports."""
    return rank() == 0


def launched_processes() -> int:
    """How many processes the launcher (``torchrun``, ``accelerate launch``) started, from ``WORLD_SIZE``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def barrier() -> None:
    if active():
        dist.barrier()


def _collective_device(t: torch.Tensor) -> torch.device:
    """NCCL reduces CUDA tensors, gloo CPU ones."""
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``t`` over all ranks (a new tensor on ``t``'s device; float64 inside, so a
    sum of many float32 parts does not depend on how they were split)."""
    if not active():
        return t.clone()
    x = t.detach().to(_collective_device(t), torch.float64)
    dist.all_reduce(x)
    return x.to(t.device, t.dtype)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0, in rank order; ranks may hold different lengths."""
    if not active():
        return t
    dev = _collective_device(t)
    n = torch.tensor([t.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.detach().to(dev)
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(t.device)


def gather_objects(obj: T) -> list[T]:
    """Every rank's picklable ``obj``, in rank order (for texts, small records)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (a decision only one rank may take, e.g. a wall-clock
    budget: ranks whose clocks disagreed would stop at different steps and hang the others)."""
    if not active():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_bounds(n: int, parts: int | None = None, index: int | None = None) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items that rank ``index`` of ``parts`` takes: sizes differ
    by at most one, earlier ranks take the extra ones. Contiguous, so RLOO/GRPO groups laid out
    prompt-major stay whole on one rank when the group count divides evenly."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's contiguous block of ``items`` (:func:`shard_bounds`)."""
    lo, hi = shard_bounds(len(items))
    return list(items[lo:hi])


def padded_share(items: Sequence[T]) -> tuple[list[T], int]:
    """This rank's block of ``items`` padded (with copies of ``items[0]``) to the largest block's length, and
    how many of them are real. When parameters are sharded (FSDP2, ZeRO-3) every forward is a collective,
    so all ranks must run the same number of them; the caller gives the padding weight 0."""
    mine = my_share(items)
    longest = -(-len(items) // world_size())
    return mine + [items[0]] * (longest - len(mine)) if items else mine, len(mine)


def global_share(local: N, total: float | torch.Tensor) -> N:
    """The weight of this rank's part of a global mean under DDP: ``local / total * world_size``.

    DDP averages the ranks' gradients, so a rank whose loss is (sum of its examples' losses) / ``total``
    must be scaled by the number of ranks for the average to equal the one-process gradient of the global
    mean. ``local`` and ``total`` count the same unit (tokens, rankings, sequences)."""
    return local / total * world_size()  # type: ignore[return-value]  # a float over a tensor total is a tensor


@contextlib.contextmanager
def shared_atomic_dir(final: str | Path) -> Iterator[Path]:
    """``runs.atomic_dir`` for a folder every rank writes part of (a checkpoint: each rank its RNG state or
    its shards): one temporary sibling, the same name on every rank, made by the main process before anyone
    writes, renamed into place by it once all have written. Every rank must enter; on an error nothing is
    renamed (the temporary folder is ``runs.clean_stale``'s)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-shared")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    yield tmp
    barrier()  # every rank's part is written
    if is_main():
        old = final.with_name(f".{final.name}.old-shared")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()  # nobody reads or replaces the folder before it is whole


class CheckpointSlot:
    """One resumable checkpoint folder shared by all ranks, replaced whole at each save: what the
    accelerate checkpointer (``training.Checkpointer``) and the FSDP2 one (``sharding.Checkpoint``) share."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def peek(self) -> dict[str, Any] | None:
        """The loop state of the checkpoint, without restoring anything."""
        f = self.folder / LOOP_STATE
        return json.loads(f.read_text()) if f.is_file() else None

    def clear(self) -> None:
        barrier()
        if is_main():
            shutil.rmtree(self.folder, ignore_errors=True)
        barrier()
