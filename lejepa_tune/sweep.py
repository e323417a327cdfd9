"""The sweep: Ray Tune trials, each launching a Ray Train ``TorchTrainer`` (Ray Train V2).

Data flows one way: the Tuner (driver) asks Optuna for a point, the trial function turns it
into a validated config and starts a ``TorchTrainer`` whose workers run
:func:`lejepa_tune.train.train`; every epoch the workers ``ray.train.report`` metrics averaged
over ranks (and rank 0's checkpoint), ``TuneReportCallback`` forwards them to Tune, where the
scheduler (ASHA, optional) and the MLflow callback see every epoch.

The trial function only drives its workers, so it reserves no CPU or GPU: on a 2-core
machine two 1-worker trials run at once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
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

from .config import config_from_dict, config_to_dict, to_plain
from .search_space import SweepSpec, trial_config
from .tracking import MLflowTrialCallback, SweepTracker, numeric_metrics, resolve_tracking_uri
from .train import train

__all__ = [
    "TrialRecord",
    "SweepResult",
    "spec_to_dict",
    "new_sweep_dir",
    "resolve_resources",
    "run_sweep",
    "train_worker",
    "write_trials_csv",
    "load_trials_csv",
]

TRIALS_CSV = "trials.csv"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the sweep ended it: what was searched, its last metrics, its state."""

    trial_id: str
    status: str  # "completed" (all epochs), "stopped" (by the scheduler) or "error"
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    checkpoint: str | None
    error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    name: str
    sweep_dir: Path
    trials: tuple[TrialRecord, ...]
    tracking_uri: str
    experiment: str
    parent_run_id: str
    elapsed_s: float
    analysis: Any = None  # report.SweepAnalysis: the label-free selection, when a trial completed


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """The resolved search space as plain data (written to ``spec.yaml`` in the sweep dir)."""
    return {
        "name": spec.name,
        "base": config_to_dict(spec.base),
        "search": {k: {f: v for f, v in dataclasses.asdict(d).items() if v is not None} for k, d in spec.search.items()},
        "tune": to_plain(dataclasses.asdict(spec.tune)),
        "resources": dataclasses.asdict(spec.resources),
        "tracking": dataclasses.asdict(spec.tracking),
        "selection": dataclasses.asdict(spec.selection),
    }


def new_sweep_dir(storage_path: str | Path, name: str) -> Path:
    """``<storage>/<name>_<YYYYmmdd-HHMMSS>``: a fresh directory, never one of an earlier sweep."""
    root = Path(storage_path).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{name}_{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{name}_{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def resolve_resources(spec: SweepSpec, cluster: Mapping[str, float]) -> tuple[float, float, int]:
    """``(cpus_per_worker, gpus_per_worker, max_concurrent_trials)`` for this cluster: GPUs
    when the cluster has them (``auto``), and as many concurrent trials as the limiting
    resource can hold (at least one)."""
    res = spec.resources
    gpus = res.gpus_per_worker
    if gpus == "auto":
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    limits = [cluster.get("CPU", 1) / (res.num_workers * res.cpus_per_worker)]
    if gpus > 0:
        limits.append(cluster.get("GPU", 0) / (res.num_workers * gpus))
    concurrent = spec.tune.max_concurrent_trials or max(1, int(min(limits)))
    return res.cpus_per_worker, float(gpus), concurrent


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one rank of the trial's DDP training."""
    cfg = config_from_dict(loop_config["config"], "trial config")
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        # The worker's CPU reservation, not the node's core count: concurrent trials share it.
        torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if "train/loss" in metrics and cfg.loss.lam > 0:
            # The paper's λ-corrected loss, per epoch, so that Tune's search and ASHA can use it
            # (tune.metric: train/scaled_loss) when λ is searched.
            metrics = {**metrics, "train/scaled_loss": metrics["train/loss"] / cfg.loss.lam ** loop_config["alpha"]}
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    train(cfg, report=report, device=device, verbose=False)  # Tune shows the metrics


def _trial_driver(tune_config: dict[str, Any], spec: SweepSpec, sweep_dir: str, cpus: float, gpus: float) -> None:
    """The Tune function trainable: turns Tune's sample into a config and launches the
    ``TorchTrainer`` that trains it; metrics reach Tune through ``TuneReportCallback``."""
    trial_id = ray.tune.get_context().get_trial_id()
    params = {k: tune_config[k] for k in spec.search}
    cfg = trial_config(spec, params)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(Path(sweep_dir) / "trials" / trial_id)))
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {})
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"config": config_to_dict(cfg), "cpus_per_worker": cpus, "alpha": spec.selection.alpha},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.resources.num_workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # Named after the trial id (no timestamp), so a restarted trial finds its run.
            name=f"train-{trial_id}",
            storage_path=str(Path(sweep_dir) / "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def _searcher(spec: SweepSpec, sweep_dir: Path) -> OptunaSearch | None:
    if not spec.search:
        return None
    n = spec.tune.num_samples
    sampler = optuna.samplers.TPESampler(seed=spec.tune.seed, n_startup_trials=max(2, min(10, n // 2)))
    # The study lives in the sweep directory: `optuna-dashboard sqlite:///.../optuna.db`.
    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    return OptunaSearch(
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


def run_sweep(
    spec: SweepSpec,
    *,
    storage_path: str | Path = "sweeps",
    address: str | None = None,
    tracking_uri: str | None = None,
    include_dashboard: bool = True,
    verbose: int = 1,
    sweep_dir: Path | None = None,
) -> SweepResult:
    """Runs the whole sweep and returns its trials. Starts (or joins, with ``address``) Ray."""
    start = time.perf_counter()
    sweep_dir = sweep_dir or new_sweep_dir(storage_path, spec.name)
    (sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.tracking_uri)
    experiment = spec.tracking.experiment or spec.name

    if not ray.is_initialized():
        context = ray.init(address=address, include_dashboard=include_dashboard, logging_level="WARNING", log_to_driver=verbose > 0)
        dashboard = getattr(context, "dashboard_url", None)
        if dashboard:
            print(f"Ray dashboard: http://{dashboard}", flush=True)
    cpus, gpus, concurrent = resolve_resources(spec, ray.cluster_resources())

    tracker = SweepTracker(uri, experiment, sweep_dir.name, sweep_dir)
    tracker.log_sweep_params({"sweep": spec_to_dict(spec) | {"base": {}}, "base": config_to_dict(spec.base)})
    print(f"MLflow: experiment '{experiment}', parent run {tracker.parent_run_id}", flush=True)
    print(f"  view it with: mlflow ui --backend-store-uri {uri}", flush=True)
    print(f"Sweep directory: {sweep_dir}", flush=True)

    def resolve_trial(tune_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        params = {k: tune_config[k] for k in spec.search if k in tune_config}
        return config_to_dict(trial_config(spec, params)), params

    callback = MLflowTrialCallback(tracker, resolve_trial)
    trainable = ray.tune.with_parameters(_trial_driver, spec=spec, sweep_dir=str(sweep_dir), cpus=cpus, gpus=gpus)
    tuner = ray.tune.Tuner(
        # The trial function only drives its TorchTrainer's workers, so it reserves no CPU or
        # GPU; Ray needs a non-empty request, hence a token of logical memory.
        ray.tune.with_resources(trainable, {"CPU": 0, "memory": 2**20}),
        tune_config=ray.tune.TuneConfig(
            search_alg=_searcher(spec, sweep_dir),
            scheduler=_scheduler(spec),
            num_samples=spec.tune.num_samples,
            max_concurrent_trials=concurrent,
        ),
        run_config=ray.tune.RunConfig(
            name="tune",
            storage_path=str(sweep_dir),
            callbacks=[callback],
            verbose=verbose,
            failure_config=ray.tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    status = "FAILED"
    analysis = None
    try:
        grid = tuner.fit()
        trials = tuple(_record(r, spec) for r in grid)
        write_trials_csv(sweep_dir / TRIALS_CSV, trials, list(spec.search))
        analysis = _select(spec, sweep_dir, trials, tracker)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return SweepResult(spec.name, sweep_dir, trials, uri, experiment, tracker.parent_run_id, time.perf_counter() - start, analysis)


def _select(spec: SweepSpec, sweep_dir: Path, trials: tuple[TrialRecord, ...], tracker: SweepTracker):
    """Label-free selection over the finished trials, logged on the parent run: the
    ``selection/*`` agreement metrics, the plots, CSV and HTML page, and the pick."""
    from .report import analyse_sweep, write_report
    from .selection import selection_metrics

    if not any(t.status == "completed" for t in trials):
        tracker.set_tag(tracker.parent_run_id, "lejepa_tune.choice", "none: no trial completed")
        return None
    analysis = analyse_sweep(sweep_dir, spec, trials)
    files = write_report(analysis, sweep_dir / "report")
    tracker.log_metrics(tracker.parent_run_id, selection_metrics(analysis.selection), step=0)
    tracker.log_artifacts(tracker.parent_run_id, files["html"].parent, "selection")
    choice = analysis.selection.picks.get(analysis.selection.default)
    tracker.set_tag(tracker.parent_run_id, "lejepa_tune.criterion", analysis.selection.default)
    tracker.set_tag(tracker.parent_run_id, "lejepa_tune.choice", choice or "none")
    return analysis


def _record(result, spec: SweepSpec) -> TrialRecord:
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    params = {k: result.config.get(k) for k in spec.search} if result.config else {}
    numeric = numeric_metrics(metrics)
    if result.error is not None:
        text = str(result.error).strip()  # the last line of a traceback is the exception
        status, error = "error", text.splitlines()[-1][:500] if text else type(result.error).__name__
    else:
        epochs = int(params.get("train.epochs", spec.base.train.epochs))  # epochs may be searched
        done = int(metrics.get("epoch", 0)) >= epochs
        status, error = ("completed" if done else "stopped"), None
    return TrialRecord(trial_id, status, params, numeric, metrics.get("checkpoint_path"), error)


def write_trials_csv(path: Path, trials: tuple[TrialRecord, ...], searched: list[str]) -> None:
    metric_keys = sorted({k for t in trials for k in t.metrics})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", *searched, *metric_keys, "checkpoint", "error"])
        for t in trials:
            writer.writerow([t.trial_id, t.status, *(t.params.get(k) for k in searched), *(t.metrics.get(k, "") for k in metric_keys), t.checkpoint or "", t.error or ""])


def load_trials_csv(path: Path) -> list[TrialRecord]:
    """Reads ``trials.csv`` back (the searched keys are the columns between status and the
    first metric, which all contain a ``/``)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    records = []
    for row in body:
        item = dict(zip(header, row))
        params = {k: _parse_scalar(v) for k, v in item.items() if k not in ("trial_id", "status", "checkpoint", "error") and "/" not in k}
        metrics = {k: float(v) for k, v in item.items() if "/" in k and v != ""}
        records.append(TrialRecord(item["trial_id"], item["status"], params, metrics, item["checkpoint"] or None, item["error"] or None))
    return records


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text

