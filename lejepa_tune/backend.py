"""Ray Train's torch backend, set up without importing torch where no tensor is made.

Two of the processes a trial's Ray Train run starts never make a tensor: Tune's trial actor,
which builds the trainer, and Ray Train's controller, which sets the workers' process group up.
Ray's ``TorchTrainer`` and ``TorchConfig`` live in modules that import torch at their top, so
with them both processes import torch too: a second and more of CPU each, paid while the
trial's workers start on the same cores.

:class:`TorchConfig` here is Ray's ``TorchConfig`` for what lejepa-tune runs (``gloo`` on CPUs,
``nccl`` on GPUs, ``env://`` rendezvous) in a module free of torch. The controller does what
Ray's ``_TorchBackend`` does (rank 0's address and a free port to every worker, then
``init_process_group`` on each rank; at the end, the group destroyed), and every step that needs
torch runs on the workers through Ray's own functions, which the workers import when they run
them. Hand it to Ray's ``DataParallelTrainer`` with :func:`torch_trainer`.

A run given no Ray Datasets (every sweep whose data is held in memory) also leaves out Ray
Train's datasets callback, which would start a ``DatasetManager`` actor for the run, a process of
its own, and hand Ray Data's context to every worker, for datasets the run does not have.

A run that nothing outside it can stop (``placement_group_cleaner=False``) also leaves out Ray
Train's placement-group cleaner: a detached actor per run (one more process, which imports Ray
Train) that asks the dashboard's state API every second whether the run's controller is alive, to
free the workers' placement group if the controller is killed. Only a killed controller needs it
(a scheduler that stops trials kills theirs); a run that ends by itself, or fails, frees its
placement group itself, and when the sweep's driver dies Ray frees the placement groups of its
job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray._private import ray_constants
from ray.exceptions import GetTimeoutError
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.util import TrainingFramework
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

__all__ = ["TorchConfig", "torch_trainer", "process_group_backend"]

logger = logging.getLogger(__name__)


@dataclass
class TorchConfig(BackendConfig):
    """How the workers' ``torch.distributed`` process group is set up: ``backend`` ``None``
    picks ``nccl`` when the workers have GPUs, ``gloo`` otherwise (as Ray's ``TorchConfig``)."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return _TorchBackend

    @property
    def train_func_context(self) -> type:
        return _TorchContext

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


def torch_trainer(
    train_loop_per_worker: Callable[[dict[str, Any]], None],
    *,
    torch_config: TorchConfig | None = None,
    placement_group_cleaner: bool = True,
    **kwargs: Any,
) -> DataParallelTrainer:
    """Ray Train's ``TorchTrainer(train_loop_per_worker, **kwargs)`` with :class:`TorchConfig`:
    the same run, the same keyword arguments. ``placement_group_cleaner=False`` leaves Ray
    Train's placement-group cleaner out, for a run whose controller nothing kills."""
    trainer = _DataParallelTrainer(train_loop_per_worker, backend_config=torch_config or TorchConfig(), **kwargs)
    trainer.placement_group_cleaner = placement_group_cleaner
    return trainer


class _DataParallelTrainer(DataParallelTrainer):
    """Ray's ``DataParallelTrainer``, without its datasets callback when it has no datasets, and
    without its placement-group cleaner when told so."""

    placement_group_cleaner = True

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        try:
            from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        except ImportError:  # a Ray that moved them: its defaults, unchanged
            return callbacks
        left_out = (() if self.datasets else (DatasetsCallback,)) + (() if self.placement_group_cleaner else (PlacementGroupCleanerCallback,))
        return [c for c in callbacks if not isinstance(c, left_out)]


def process_group_backend(resources_per_worker: dict[str, float]) -> str:
    """``nccl`` for workers that hold a GPU (or a share of one), ``gloo`` for CPU workers."""
    return "nccl" if resources_per_worker.get("GPU", 0) > 0 else "gloo"


class _TorchContext:
    """Ray's context around the train function on every worker (it sets the worker's CUDA
    device), imported there."""

    def __enter__(self) -> None:
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc: object) -> bool:
        return False


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _init_process_group(**kwargs: Any) -> None:
    """On one worker: the rank's distributed environment variables, then its process group."""
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group

    _set_torch_distributed_env_vars()
    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _TorchBackend(Backend):
    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        backend = backend_config.backend or process_group_backend(worker_group.get_resources_per_worker())
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        ray.get([
            worker_group.execute_single_async(rank, _init_process_group, backend=backend, world_rank=rank, world_size=len(worker_group),
                                              init_method="env://", timeout_s=backend_config.timeout_s)
            for rank in range(len(worker_group))
        ])

    def on_shutdown(self, worker_group, backend_config: TorchConfig) -> None:
        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:  # as Ray's: a stuck process group does not hold the run's end
            logger.warning("Torch process group shutdown timed out after %s seconds", timeout_s)
