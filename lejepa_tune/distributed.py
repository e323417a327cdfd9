"""The few collectives the package uses, each correct in one process as well as under DDP.

``autograd_all_reduce`` is the one autograd sees through (SIGReg, the projector's BatchNorm);
the others move plain numbers (metrics, evaluation features) and never carry gradients.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

__all__ = [
    "world_size",
    "rank",
    "autograd_all_reduce",
    "autograd_all_gather",
    "mean_over_ranks",
    "all_gather_rows",
    "shard",
    "broadcast_object",
]


def world_size() -> int:
    """The number of processes in the default group, 1 when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group, 0 when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def autograd_all_reduce(tensor: Tensor) -> Tensor:
    """Sum over ranks that autograd sees through: returns a *new* tensor (use it; the input is
    left per-rank), and its backward all-reduces the gradient.

    ``torch.distributed.nn.functional.all_reduce`` is the documented differentiable
    collective; it warns that it is deprecated in favour of a private module, so the warning
    is silenced here, and the 2-process equivalence tests guard its behaviour.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        return dist_fn.all_reduce(tensor, op=dist.ReduceOp.SUM)


def autograd_all_gather(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape everywhere), differentiable; see :func:`autograd_all_reduce`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        return list(dist_fn.all_gather(tensor.contiguous()))


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(values: Tensor) -> Tensor:
    """The float64 mean over ranks of a CPU tensor (a copy of it when not distributed)."""
    if world_size() == 1:
        return values.double().clone()
    # A copy: `.to()` returns `values` itself when nothing changes, and the collective works
    # in place.
    buf = values.to(_collective_device(), dtype=torch.float64, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu() / world_size()


def all_gather_rows(local: Tensor, total: int) -> Tensor:
    """Concatenates the rows that rank ``r`` holds for items ``r, r + W, r + 2W, ...`` back into
    item order: ``local (n_r, ...)`` on every rank -> ``(total, ...)`` on every rank (CPU).

    The shards of :func:`shard` differ in length by at most one; they are padded to one
    length for the collective and trimmed after.
    """
    world = world_size()
    if world == 1:
        return local.cpu()
    longest = -(-total // world)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    device = _collective_device()
    parts = [torch.empty_like(padded, device=device) for _ in range(world)]
    dist.all_gather(parts, padded.to(device))
    out = local.new_empty((total, *local.shape[1:]), device="cpu")
    for r, part in enumerate(parts):
        rows = len(range(r, total, world))
        out[r::world] = part[:rows].cpu()
    return out


def shard(total: int) -> range:
    """The items ``0..total-1`` this rank handles: ``rank, rank + W, ...``."""
    return range(rank(), total, world_size())


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (itself when not distributed)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
