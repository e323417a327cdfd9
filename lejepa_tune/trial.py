"""One trial of a sweep, as Ray runs it: the Tune function trainable that launches a Ray Train
torch run (:func:`lejepa_tune.backend.torch_trainer`), and the function every Train worker runs
(one DDP rank of :func:`lejepa_tune.train.train`).

This module is what Ray's actor processes import for each trial, so it imports nothing the
trial does not need (no MLflow, no Optuna, no torch: the trial's actor only builds the run): a
trial's start-up is paid in imports. The workers' own side is :mod:`lejepa_tune.worker`.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Mapping

import pyarrow.fs
import ray
import ray.train
import ray.tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY as CHECKPOINT_PATH
from ray.tune.integration.ray_train import TuneReportCallback

from .backend import torch_trainer
from .config import config_to_dict
from .metrics import EPOCH, read_checkpoint_metrics
from .records import filesystem, join_uri
from .search_space import SweepSpec, trial_config
from .worker import train_worker

__all__ = ["trial_output_dir", "checkpointed_metrics", "finished_run", "resolve_resources", "skip_preemption_watcher", "needs_placement_group_cleaner", "poll_workers_often", "quiet_when_terminated", "trial_driver"]

# Ray Train's settings read in the process that starts a run and passed on to the run's
# controller: its preemption watcher, and how often the controller polls its workers.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
POLL_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_INTERVAL_S = 0.5


def checkpointed_metrics(output_dir: str) -> dict[str, Any] | None:
    """The metrics (and ``checkpoint_path``) of the latest checkpoint of the Ray Train run in
    ``output_dir``: the last epoch the run saved, whether or not its report reached the driver;
    ``None`` when it has none."""
    fs, path = filesystem(output_dir)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    checkpoints = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for checkpoint in reversed(checkpoints):
        try:
            with fs.open_input_stream(f"{checkpoint}/metrics.json") as f:
                metrics, files = read_checkpoint_metrics(f.read())
        except (FileNotFoundError, ValueError):  # a checkpoint being written when the driver died: missing or cut short
            continue
        if not _whole(fs, checkpoint, files):  # its metrics copied whole, but not every model file
            continue
        return {**metrics, CHECKPOINT_PATH: checkpoint}
    return None


def _whole(fs: pyarrow.fs.FileSystem, checkpoint: str, files: Mapping[str, int]) -> bool:
    """Whether every file of ``files`` is in ``checkpoint`` at its size."""
    infos = fs.get_file_info([f"{checkpoint}/{name}" for name in files])
    return all(i.type == pyarrow.fs.FileType.File and i.size == files[i.base_name] for i in infos)


def finished_run(output_dir: str, epochs: int) -> dict[str, Any] | None:
    """The final result (metrics and ``checkpoint_path``) of a trial's Ray Train run whose
    latest checkpoint is that of its last epoch; ``None`` when it has none or is unfinished."""
    metrics = checkpointed_metrics(output_dir)
    return metrics if metrics is not None and metrics.get(EPOCH, 0) >= epochs else None


def trial_output_dir(sweep_dir: str, trial_id: str) -> str:
    """Where the trial's Ray Train run keeps its checkpoints: the trial's ``train.output_dir``."""
    return join_uri(sweep_dir, "train", f"train-{trial_id}")


def resolve_resources(spec: SweepSpec, cluster: Mapping[str, float]) -> tuple[float, float]:
    """``(cpus_per_worker, gpus_per_worker)`` for a trial starting now on this cluster:
    ``gpus_per_worker: auto`` asks for one GPU per worker when the cluster has GPUs at that
    moment (nodes an autoscaler added since the sweep began count), none otherwise."""
    res = spec.resources
    gpus = res.gpus_per_worker
    if gpus == "auto":
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    return float(res.cpus_per_worker), float(gpus)


def skip_preemption_watcher(alive_nodes: int) -> None:
    """Leaves Ray Train's preemption watcher out of this process's runs on a one-node cluster.

    The watcher is one more actor (a process, with its imports) per run, which polls for other
    nodes being drained; a one-node cluster has none to drain, and two trials starting together
    on a small machine compete for its cores. Where the user set the variable, it stays."""
    if alive_nodes == 1:
        os.environ.setdefault(PREEMPTION_WATCHER, "0")


def needs_placement_group_cleaner(spec: SweepSpec, alive_nodes: int) -> bool:
    """Whether a trial's run needs Ray Train's placement-group cleaner, which frees the run's
    workers when its controller is killed: when a scheduler can stop the trial (Tune kills a
    stopped trial's actor, and the controller with it), or when the cluster has more than one
    node (a lost node can take the trial's actor, and the controller with it, while the workers'
    resources on the other nodes stay held). A trial no scheduler stops, on one node, ends by
    itself or fails, and its controller frees the placement group either way; when the sweep's
    driver dies, Ray frees its job's placement groups. (An interrupted sweep stops its running
    trials too; the sweep frees what their runs held itself, ``sweep._FreeOrphanedWorkers``.)"""
    return spec.tune.scheduler != "none" or alive_nodes > 1


def poll_workers_often() -> None:
    """Has Ray Train's controller poll its workers every ``POLL_INTERVAL_S`` instead of its
    default 2 s.

    The controller learns of everything at a poll: a worker's report (which only then reaches
    Tune, its scheduler and the sweep's callbacks), a finished run, a failed worker. With 2 s,
    every epoch's result reaches Tune up to 2 s late, a trial ASHA stops trains on meanwhile,
    and every trial ends up to 2 s after its last report. A poll is one small remote call per
    worker. Where the user set the variable, it stays."""
    os.environ.setdefault(POLL_INTERVAL, str(POLL_INTERVAL_S))


def _drop_system_exit(unraisable: Any, default: Any = sys.__unraisablehook__) -> None:
    if not isinstance(unraisable.exc_value, SystemExit):
        default(unraisable)


def quiet_when_terminated() -> None:
    """Keeps a trial's actor from printing a traceback as Ray ends it.

    Tune ends a finished trial by asking its actor to exit, and then removes the trial's
    placement group. When the removal reaches Ray before the actor's process is gone, Ray sends
    the process SIGTERM, and Ray's handler raises ``SystemExit``; if Python is running a weakref
    callback at that moment (as it is, often, while an exiting process frees its objects), the
    exception cannot be raised, and Python prints ``Exception ignored in: ...`` and a traceback
    to the actor's stderr, which Ray forwards to the sweep's console: now and then, a traceback
    in the middle of a sweep's output, after a trial that finished well (ray-project/ray#13487).
    Python ignores that ``SystemExit`` either way, and Ray kills the process 0.2 s later, so
    only the message goes: every other exception that cannot be raised goes to the hook that was
    there before (Python's own, unless something set another), once however often this is called."""
    if not (isinstance(sys.unraisablehook, functools.partial) and sys.unraisablehook.func is _drop_system_exit):
        sys.unraisablehook = functools.partial(_drop_system_exit, default=sys.unraisablehook)


def trial_driver(tune_config: dict[str, Any], spec: SweepSpec, sweep_dir: str, data: dict[str, Any]) -> None:
    """The Tune function trainable: turns Tune's sample into a config and launches the Ray Train
    run that trains it; metrics reach Tune through ``TuneReportCallback``."""
    started_at = time.time()
    quiet_when_terminated()
    trial_id = ray.tune.get_context().get_trial_id()
    params = {k: tune_config[k] for k in spec.search}
    output = trial_output_dir(sweep_dir, trial_id)
    cfg = trial_config(spec, params, output)
    finished = finished_run(output, cfg.train.epochs)
    if finished is not None:
        # A resumed sweep whose driver died after this trial's last report, before Tune wrote
        # it down: the trial is done, so its final result is reported again, and nothing runs.
        ray.tune.report(finished)
        return
    cpus, gpus = resolve_resources(spec, ray.cluster_resources())
    alive_nodes = sum(1 for node in ray.nodes() if node["Alive"])
    skip_preemption_watcher(alive_nodes)
    poll_workers_often()
    streamed = None
    if not cfg.data.in_memory:
        # Data not held in memory is streamed to the workers by Ray Data, decoded where Ray runs
        # it. (Imported here: the data and streaming modules import torch.)
        from .data import build_datasets
        from .streaming import TRAIN, split_dataset

        streamed = {TRAIN: split_dataset(build_datasets(cfg.data).train)}
    trainer = torch_trainer(
        train_worker,
        placement_group_cleaner=needs_placement_group_cleaner(spec, alive_nodes),
        datasets=streamed,
        train_loop_config={"config": config_to_dict(cfg), "cpus_per_worker": cpus, "data": data, "started_at": started_at},
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.resources.num_workers, use_gpu=gpus > 0,
            resources_per_worker={"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {}),
        ),
        run_config=ray.train.RunConfig(
            # Named after the trial (no timestamp): a restarted trial finds its run, and Ray
            # Train resumes it from its latest checkpoint.
            name=f"train-{trial_id}",
            storage_path=join_uri(sweep_dir, "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=spec.tune.max_failures),
            # Ray Train's per-checkpoint INFO lines would bury Tune's progress table.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()


