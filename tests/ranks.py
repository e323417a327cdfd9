"""A function run on real gloo ranks, and a free loopback port. Imports torch alone: every
spawned rank imports this module (and the test module that holds the function) before it runs."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, fn, args) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(*args), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def on_ranks(fn, tmp_dir, *args, world: int = 2) -> list:
    """``fn(*args)`` run in ``world`` spawned processes forming one gloo process group (``fn``
    a module-level function, its result saved with ``torch.save``); the results, by rank."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(world, free_port(), str(tmp_dir), fn, args), nprocs=world, join=True)
    return [torch.load(os.path.join(tmp_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
