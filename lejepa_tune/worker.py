"""What every Ray Train worker of a trial runs: one DDP rank of :func:`lejepa_tune.train.train`,
with a :class:`RaySink` that reports to Ray Train and resumes from its checkpoints.

The training stack (torch, and :mod:`lejepa_tune.train`: timm, torchvision, the views) is
imported when a worker starts training, not with this module: the trial's own process and Ray
Train's controller, which import this module to hand :func:`train_worker` on, never train and do
not pay for it."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train

from .config import Config, config_from_dict
from .metrics import DIVERGED, EPOCH, label_free_modes, read_checkpoint_metrics

if TYPE_CHECKING:
    from .train import Stream

__all__ = ["RaySink", "train_worker"]


class RaySink:
    """A Ray Train worker's side of :class:`lejepa_tune.train.Sink`: resume from
    ``ray.train.get_checkpoint()``, report with ``ray.train.report`` (rank 0's checkpoint is
    uploaded to the run's storage, then its local copy deleted)."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self._restored: Path | None = None

    def resume_from(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # A local copy of the checkpoint to read (copied even from local storage: one model and
        # optimiser state per rank, once per resume).
        self._restored = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="lejepa_resume_")))
        # The epoch the run resumes from is reported again: if the driver died while its result
        # was on the way, Tune and MLflow would miss it (MLflow logs each epoch once).
        metrics = self._restored / "metrics.json"
        if metrics.is_file():
            ray.train.report(read_checkpoint_metrics(metrics.read_text())[0])
        return self._restored

    def checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="lejepa_ckpt_"))

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=ckpt, delete_local_checkpoint_after_upload=checkpoint is not None)

    def progress(self, batches, total: int, epoch: int):
        return batches  # Tune's table shows progress; workers stay quiet


def _quiet_ray_train() -> None:
    """Ray Train logs every report at INFO, metrics and all, through loggers named by their
    module's file path, out of reach of its ``LoggingConfig`` level (which filters loggers named
    ``ray.train.*``): its lines would bury Tune's progress table. Its warnings still show."""
    package = os.path.dirname(ray.train.__file__)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(package):
            logging.getLogger(name).setLevel(logging.WARNING)


def _ray_data_stream(cfg: Config) -> Stream | None:
    """This worker's share of the training split streamed by Ray Data, which the trial passes
    when the data is not held in memory (see :mod:`lejepa_tune.streaming`)."""
    if cfg.data.in_memory:
        return None
    from .streaming import TRAIN, epoch_stream
    from .train import stream_seed

    shard = ray.train.get_dataset_shard(TRAIN)
    rank = ray.train.get_context().get_world_rank()
    return lambda epoch, per_rank, steps: epoch_stream(shard, per_rank, steps, stream_seed(cfg.train.seed, epoch, rank))


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one rank of the trial's DDP training."""
    import ray.train.torch
    import torch

    from .train import TrainingDiverged, train

    _quiet_ray_train()
    cfg = config_from_dict(loop_config["config"], "trial config")
    device = ray.train.torch.get_device()  # the accelerator Ray gave this worker, or the CPU
    if device.type == "cpu":
        # The worker's CPU reservation, not the node's core count: concurrent trials share it.
        torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))
    shared = loop_config["data"]["ref"]  # the sweep's decoded dataset, from the object store
    sink = RaySink(loop_config["started_at"])
    try:
        train(cfg, sink, device=device, data=ray.get(shared) if shared is not None else None, stream=_ray_data_stream(cfg))
    except TrainingDiverged as err:
        # A diverged run ends here, reported, not retried: resuming from the last checkpoint
        # with the same seed would diverge again. The sweep goes on.
        # The searchable metrics are reported as nan, so that Optuna records a failed trial.
        ray.train.report({**dict.fromkeys(label_free_modes(cfg.loss.regularizer), math.nan), EPOCH: err.epoch, DIVERGED: str(err)})
    finally:
        if sink._restored is not None:
            shutil.rmtree(sink._restored, ignore_errors=True)
