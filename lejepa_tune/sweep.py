"""The sweep: Ray Tune trials, each launching a Ray Train ``TorchTrainer`` (Ray Train V2).

Data flows one way: the Tuner (driver) asks Optuna for a point; the trial function turns it
into a validated config and starts a ``TorchTrainer`` whose workers run
:func:`lejepa_tune.train.train`; every epoch the workers ``ray.train.report`` the metrics (the
same on every rank) and rank 0's checkpoint, which Ray uploads to the sweep's storage, the one
copy there is; ``TuneReportCallback`` forwards the metrics to Tune, where the searcher, the
scheduler (ASHA, optional) and the MLflow callback see every epoch. :func:`run_sweep` returns
the trials as :class:`~lejepa_tune.records.SweepRecords` and knows nothing of what is done
with them.

The trial function only drives its workers, so it reserves no CPU or GPU: on a 2-core machine
two 1-worker trials run at once.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import optuna
import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from .config import config_from_dict, config_to_dict
from .data import DataSplits, TensorImages, as_tensors, build_datasets
from .metrics import DIVERGED, EPOCH, label_free_modes
from .records import SweepRecords, TrialRecord, join_uri, write_records, write_text
from .search_space import SweepSpec, spec_to_dict, trial_config
from .tracking import MLflowTrialCallback, SweepTracker, numeric_metrics, resolve_tracking_uri
from .train import TrainingDiverged, train

__all__ = ["RaySink", "new_sweep_dir", "resolve_resources", "trial_output_dir", "run_sweep", "train_worker"]

SPEC_FILE = "spec.yaml"


class RaySink:
    """A Ray Train worker's side of :class:`lejepa_tune.train.Sink`: resume from
    ``ray.train.get_checkpoint()``, report with ``ray.train.report`` (rank 0's checkpoint is
    uploaded to the run's storage, then its local copy deleted)."""

    def __init__(self) -> None:
        self._restored: Path | None = None

    def resume_from(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # A local copy of the checkpoint to read (a no-op on shared local storage).
        self._restored = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="lejepa_resume_")))
        return self._restored

    def checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="lejepa_ckpt_"))

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=ckpt, delete_local_checkpoint_after_upload=checkpoint is not None)

    def progress(self, batches, total: int, epoch: int):
        return batches  # Tune's table shows progress; workers stay quiet


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one rank of the trial's DDP training."""
    cfg = config_from_dict(loop_config["config"], "trial config")
    device = ray.train.torch.get_device()  # the accelerator Ray gave this worker, or the CPU
    if device.type == "cpu":
        # The worker's CPU reservation, not the node's core count: concurrent trials share it.
        torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))
    shared = loop_config["data"]["ref"]  # the sweep's decoded dataset, from the object store
    sink = RaySink()
    try:
        train(cfg, sink, device=device, data=ray.get(shared) if shared is not None else None)
    except TrainingDiverged as err:
        # A diverged run ends here, reported, not retried: resuming from the last checkpoint
        # with the same seed would diverge again. The sweep goes on.
        # The searchable metrics are reported as nan, so that Optuna records a failed trial.
        ray.train.report({**dict.fromkeys(label_free_modes(cfg.loss.regularizer), math.nan), EPOCH: err.epoch, DIVERGED: str(err)})
    finally:
        if sink._restored is not None:
            shutil.rmtree(sink._restored, ignore_errors=True)


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


def _concurrency(spec: SweepSpec, cluster: Mapping[str, float]) -> int:
    """As many concurrent trials as the limiting resource holds (at least one)."""
    if spec.tune.max_concurrent_trials:
        return spec.tune.max_concurrent_trials
    cpus, gpus = resolve_resources(spec, cluster)
    limits = [cluster.get("CPU", 1) / (spec.resources.num_workers * cpus)]
    if gpus > 0:
        limits.append(cluster.get("GPU", 0) / (spec.resources.num_workers * gpus))
    return max(1, int(min(limits)))


def _trial_driver(tune_config: dict[str, Any], spec: SweepSpec, sweep_dir: str, data: dict[str, Any]) -> None:
    """The Tune function trainable: turns Tune's sample into a config and launches the
    ``TorchTrainer`` that trains it; metrics reach Tune through ``TuneReportCallback``."""
    trial_id = ray.tune.get_context().get_trial_id()
    params = {k: tune_config[k] for k in spec.search}
    output = trial_output_dir(sweep_dir, trial_id)
    cfg = trial_config(spec, params, output)
    cpus, gpus = resolve_resources(spec, ray.cluster_resources())
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"config": config_to_dict(cfg), "cpus_per_worker": cpus, "data": data},
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
        ),
    )
    trainer.fit()


def new_sweep_dir(storage_path: str, name: str) -> str:
    """``<storage>/<name>_<YYYYmmdd-HHMMSS>``, a directory no earlier sweep used (local paths are
    made absolute; URIs are taken as they are)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if "://" in storage_path:
        return join_uri(storage_path, f"{name}_{stamp}")
    root = Path(storage_path).expanduser().resolve()
    path, suffix = root / f"{name}_{stamp}", 1
    while path.exists():
        suffix += 1
        path = root / f"{name}_{stamp}-{suffix}"
    path.mkdir(parents=True)
    return str(path)


class _OptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, which tells Optuna that a trial whose metric is NaN (a diverged run)
    failed; Optuna refuses a NaN value, and Ray's class would leave that trial running."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):
            result, error = {k: v for k, v in result.items() if k != self.metric}, True
        super().on_trial_complete(trial_id, result, error)


def _searcher(spec: SweepSpec, sweep_dir: str) -> OptunaSearch | None:
    if not spec.search:
        return None
    n = spec.tune.num_samples
    sampler = optuna.samplers.TPESampler(seed=spec.tune.seed, n_startup_trials=max(2, min(10, n // 2)))
    # On local storage the study lives in the sweep directory, so Optuna's own tools open it:
    # `optuna-dashboard sqlite:///SWEEP_DIR/optuna.db`.
    storage = None if "://" in sweep_dir else optuna.storages.RDBStorage(f"sqlite:///{Path(sweep_dir) / 'optuna.db'}")
    return _OptunaSearch(
        space={k: d.to_optuna() for k, d in spec.search.items()},
        metric=spec.tune.metric,
        mode=spec.tune.mode,
        sampler=sampler,
        study_name=spec.name,
        storage=storage,
        points_to_evaluate=[dict(p) for p in spec.tune.points_to_evaluate] or None,
    )


def _scheduler(spec: SweepSpec):
    if spec.tune.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=spec.tune.metric,
            mode=spec.tune.mode,
            max_t=max(1, spec.base.train.epochs),
            grace_period=min(spec.tune.grace_period, max(1, spec.base.train.epochs)),
            reduction_factor=spec.tune.reduction_factor,
        )
    return FIFOScheduler()


def _shared_data(spec: SweepSpec) -> Any:
    """``{"ref": ...}``: the decoded dataset, once per sweep, in Ray's object store (workers on
    any node read it from there), or ``None`` when trials load their own (a sweep that searches
    ``data.*``, or data too large to hold in memory). Wrapped in a dict so that
    ``tune.with_parameters`` passes the reference on instead of the data."""
    if not spec.base.data.in_memory or any(k.startswith("data.") for k in spec.search):
        return {"ref": None}
    splits = build_datasets(spec.base.data)
    decoded = DataSplits(as_tensors(splits.train, spec.base.data.num_workers), as_tensors(splits.val, spec.base.data.num_workers), splits.num_classes, splits.name)
    return {"ref": ray.put(decoded)}


def run_sweep(
    spec: SweepSpec,
    *,
    storage_path: str = "sweeps",
    address: str | None = None,
    tracking_uri: str | None = None,
    include_dashboard: bool = True,
    verbose: int = 1,
) -> SweepRecords:
    """Runs the whole sweep and returns its trials. Starts (or joins, with ``address``) Ray."""
    start = time.perf_counter()
    sweep_dir = new_sweep_dir(storage_path, spec.name)
    write_text(join_uri(sweep_dir, SPEC_FILE), yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.tracking_uri)
    experiment = spec.tracking.experiment or spec.name

    if not ray.is_initialized():
        context = ray.init(address=address, include_dashboard=include_dashboard, logging_level="WARNING", log_to_driver=verbose > 0)
        dashboard = getattr(context, "dashboard_url", None)
        if dashboard:
            print(f"Ray dashboard: http://{dashboard}", flush=True)

    tracker = SweepTracker(uri, experiment, Path(sweep_dir).name, sweep_dir)
    tracker.log_sweep_params(spec_to_dict(spec))
    print(f"MLflow: experiment '{experiment}', parent run {tracker.parent_run_id}", flush=True)
    print(f"  view it with: mlflow ui --backend-store-uri {tracker.display_uri} --host 127.0.0.1 --workers 1", flush=True)
    print(f"Sweep directory: {sweep_dir}", flush=True)

    def resolve_trial(trial_id: str, tune_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        params = {k: tune_config[k] for k in spec.search if k in tune_config}
        return config_to_dict(trial_config(spec, params, trial_output_dir(sweep_dir, trial_id))), params

    callback = MLflowTrialCallback(tracker, resolve_trial)
    trainable = ray.tune.with_parameters(_trial_driver, spec=spec, sweep_dir=sweep_dir, data=_shared_data(spec))
    tuner = ray.tune.Tuner(
        # The trial function only drives its TorchTrainer's workers, so it reserves no CPU or
        # GPU; Ray needs a non-empty request, hence a token of logical memory.
        ray.tune.with_resources(trainable, {"CPU": 0, "memory": 2**20}),
        tune_config=ray.tune.TuneConfig(
            search_alg=_searcher(spec, sweep_dir),
            scheduler=_scheduler(spec),
            num_samples=spec.tune.num_samples,
            max_concurrent_trials=_concurrency(spec, ray.cluster_resources()),
        ),
        run_config=ray.tune.RunConfig(
            name="tune",
            storage_path=sweep_dir,
            callbacks=[callback],
            verbose=verbose,
            failure_config=ray.tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    status = "FAILED"
    try:
        grid = tuner.fit()
        trials = tuple(_record(r, spec, sweep_dir, callback.run_ids) for r in grid)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    records = SweepRecords(
        name=spec.name, spec=spec_to_dict(spec), trials=trials, sweep_dir=sweep_dir, tracking_uri=uri,
        experiment=experiment, parent_run_id=tracker.parent_run_id, elapsed_s=time.perf_counter() - start,
    )
    write_records(records)
    return records


def _record(result, spec: SweepSpec, sweep_dir: str, run_ids: Mapping[str, str]) -> TrialRecord:
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    params = {k: result.config.get(k) for k in spec.search} if result.config else {}
    epochs = int(metrics.get(EPOCH, 0) or 0)
    if result.error is not None:
        text = str(result.error).strip()  # the last line of a traceback is the exception
        status, error = "error", (text.splitlines()[-1][:500] if text else type(result.error).__name__)
    elif metrics.get(DIVERGED):
        status, error = "error", f"TrainingDiverged: {metrics[DIVERGED]}"
    else:
        target = int(params.get("train.epochs", spec.base.train.epochs))  # epochs may be searched
        status, error = ("completed" if epochs >= target else "stopped"), None
    details = {k: v for k, v in metrics.items() if isinstance(v, str) and "/" in k and k != DIVERGED}
    checkpoint = metrics.get("checkpoint_path")
    return TrialRecord(
        trial_id=trial_id, status=status, params=params, metrics=numeric_metrics(metrics), details=details,
        checkpoint=_checkpoint_uri(sweep_dir, checkpoint) if checkpoint else None, error=error, epochs=epochs,
        run_id=run_ids.get(trial_id),
    )


def _checkpoint_uri(sweep_dir: str, path: str) -> str:
    """Ray reports a checkpoint's path within its storage filesystem (``bucket/key`` for
    ``s3://``); as a URI it carries the sweep storage's scheme again."""
    if "://" in sweep_dir and "://" not in path:
        return f"{sweep_dir.split('://', 1)[0]}://{path.lstrip('/')}"
    return path
