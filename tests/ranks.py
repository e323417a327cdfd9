"""Functions run on real gloo ranks, and a free loopback port. Imports torch alone: every spawned
rank imports this module (and the test module that holds a function) before it runs one.

The ranks are spawned once per test session (the ``gloo_ranks`` fixture of ``conftest.py``):
each spawn imports torch and forms a process group, about as long as the test that uses it."""

from __future__ import annotations

import io
import os
import socket
import traceback
from multiprocessing.connection import wait

import torch

TIMEOUT_S = 300.0  # one function on every rank; a rank that raised leaves the others in a collective


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world: int, port: int, conn) -> None:
    """A rank: joins the gloo group, then runs each ``(fn, args)`` it is sent until it is sent
    ``None``, answering with ``torch.save``'s bytes of the result or with the traceback."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        while (job := conn.recv()) is not None:
            fn, args = job
            try:
                buf = io.BytesIO()
                torch.save(fn(*args), buf)
                conn.send(("ok", buf.getvalue()))
            except BaseException:  # noqa: BLE001 - the parent raises it, with this traceback
                conn.send(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # every answer is sent: skip the interpreter's teardown of torch (about a second)


class RankFailed(RuntimeError):
    pass


class Ranks:
    """``world`` spawned processes forming one gloo process group, kept for many calls (and
    spawned again for the next call after a failure)."""

    def __init__(self, world: int = 2):
        self.world = world
        self._conns, self._procs = [], []

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        port = free_port()
        world = self.world
        for rank in range(world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(rank, world, port, child), name=f"gloo-rank{rank}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def run(self, fn, *args) -> list:
        """``fn(*args)`` on every rank at once (``fn`` a module-level function, its result
        saved with ``torch.save``); the results, by rank. A rank that raises, dies or runs past
        ``TIMEOUT_S`` raises ``RankFailed`` here and stops the group."""
        if not self._procs:
            self._start()
        for conn in self._conns:
            conn.send((fn, args))
        answers: dict[int, tuple] = {}
        while len(answers) < self.world:
            ready = wait([c for r, c in enumerate(self._conns) if r not in answers], timeout=TIMEOUT_S)
            if not ready:
                self._kill()
                raise RankFailed(f"{fn.__name__}: no answer from every rank within {TIMEOUT_S:.0f} s")
            for conn in ready:
                rank = self._conns.index(conn)
                try:
                    answers[rank] = conn.recv()
                except (EOFError, OSError):
                    proc = self._procs[rank]
                    self._kill()
                    raise RankFailed(f"{fn.__name__}: rank {rank} died (exit code {proc.exitcode})") from None
                if answers[rank][0] == "error":
                    self._kill()  # the other ranks may wait in a collective that will not come
                    raise RankFailed(f"{fn.__name__} raised on rank {rank}:\n{answers[rank][1]}")
        return [torch.load(io.BytesIO(answers[r][1]), weights_only=False) for r in range(self.world)]

    def close(self) -> None:
        """Asks every rank to leave the group and exit; kills those that do not within 10 s."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:  # a rank already gone
                pass
        self._kill(grace_s=10)

    def _kill(self, grace_s: float = 0) -> None:
        for proc in self._procs:
            proc.join(timeout=grace_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
