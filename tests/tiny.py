"""What the tests share: one set of tiny training settings (a digits subset, a one-block ViT,
few slices), as a base config, as ``--set`` overrides and as a config training into a test's
directory, a sink that keeps every epoch's report, hand-made sweep records and Ray
Train checkpoint directories, one run trained the way a trial's worker trains it, a search space of every kind of distribution and a search-space file over the tiny base, hand-made
resamples with a near-tie, a copy of a tracking database, the figures a full report shows, the environment for an MLflow server, and a way to stop a server with everything it started.
(Running a function on real gloo ranks: ``ranks.py``, which imports torch alone, so that the
spawned processes start fast.)"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from lejepa_tune.config import flatten_dict, load_config
from lejepa_tune.metrics import (EPOCH, FEATURE_SPACES, LABELFREE_CRITERIA, LOSS, OBJECTIVE, OBJECTIVE_RESAMPLES, REFERENCE_ACC, REFERENCE_CORRECT, labelfree_key, pack_bits,
                                 pack_floats)
from lejepa_tune.records import SweepRecords, TrialRecord
from lejepa_tune.train import LocalSink, train

TINY_BASE = {
    "data": {"max_train_samples": 128, "max_val_samples": 60},
    "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}, "proj_hidden_dims": [64]},
    "train": {"epochs": 1, "batch_size": 32},
    "loss": {"num_slices": 32},
    "labelfree": {"num_images": 64},
    "eval": {"linear_max_iter": 100},
}
TINY = [f"{k}={json.dumps(v)}" for k, v in flatten_dict(TINY_BASE).items()]

# A search space of every kind of distribution, 6 epochs, ASHA's first rung after 2, 2 workers a trial.
SPACE = {
    "name": "s",
    "base": {"train": {"epochs": 6}},
    "search": {
        "loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.5},
        "optim.lr": {"type": "uniform", "low": 0.0005, "high": 0.005},
        "model.proj_dim": {"type": "qint", "low": 16, "high": 64, "step": 16},
        "views.n_global": {"type": "choice", "values": [2, 4]},
        "eval.knn_k": {"type": "int", "low": 10, "high": 20},
    },
    "tune": {"scheduler": "asha", "grace_period": 2, "reduction_factor": 3},
    "resources": {"num_workers": 2, "cpus_per_worker": 1},
}


def tiny_config(tmp_path: Path, *extra: str):
    """The tiny settings as a config, training into ``tmp_path/run``."""
    return load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}", *extra])


class Recorder(LocalSink):
    """The local sink, keeping what each epoch reported (and optionally stopping the run)."""

    def __init__(self, cfg, stop_after: int | None = None):
        super().__init__(cfg, verbose=False)
        self.reports, self.stop_after = [], stop_after

    def report(self, metrics, checkpoint):
        super().report(metrics, checkpoint)
        self.reports.append(dict(metrics))
        if self.stop_after is not None and len(self.reports) == self.stop_after:
            raise KeyboardInterrupt  # the process "dies" right after a checkpoint


# The search most sweep tests run: λ alone, over the range of the shipped spaces.
LAM_SEARCH = {"loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.5}}


def write_space(tmp_path: Path, name: str, search: dict, tune: dict | None = None, resources: dict | None = None, base: dict | None = None) -> Path:
    """A search-space YAML ``<tmp_path>/<name>.yaml`` over the tiny base (``base`` merged on top)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {**TINY_BASE, **(base or {})}, "search": search, "tune": tune or {}, "resources": resources or {}}))
    return path


def write_checkpoint(run_dir: Path, index: int, epoch: int | None) -> str:
    """A checkpoint directory as Ray Train writes it, with the metrics a worker saves in it;
    ``epoch=None`` is one still being written (no metrics yet)."""
    path = run_dir / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    if epoch is not None:
        (path / "metrics.json").write_text(json.dumps({EPOCH: epoch, LOSS: 1.0 / epoch}))
    return str(path)


def synthetic_records(n: int = 8, seed: int = 0, name: str = "synthetic") -> SweepRecords:
    """A λ and learning-rate sweep of ``n`` completed trials (plus one stopped and one failed)
    whose objective tracks the reference accuracy with some noise."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lam, lr = float(10 ** rng.uniform(-2.3, -0.3)), float(10 ** rng.uniform(-3.5, -2.3))
        acc = 0.9 - 0.4 * abs(np.log10(lam) + 1.3) / 1.3
        correct = rng.random(500) < acc
        metrics = {labelfree_key(s, c): float(rng.normal(1.0, 0.3)) for s in FEATURE_SPACES for c in LABELFREE_CRITERIA}
        metrics.update({
            OBJECTIVE: 20 * acc + float(rng.normal(0, 0.5)),
            "train/loss": 0.1 + lam,
            "train/scaled_loss": (0.1 + lam) / lam**0.4,
            REFERENCE_ACC: float(correct.mean()),
            "eval/linear_acc": float(correct.mean()),
        })
        trials.append(TrialRecord(f"t{i:02d}", "completed", {"loss.lam": lam, "optim.lr": lr}, metrics, {REFERENCE_CORRECT: pack_bits(correct)},
                                  checkpoint=None, epochs=3))
    trials.append(TrialRecord("stop", "stopped", {"loss.lam": 0.1, "optim.lr": 1e-3}, {OBJECTIVE: 99.0}, epochs=1))
    trials.append(TrialRecord("fail", "error", {"loss.lam": 0.2, "optim.lr": 1.0}, {}, error="TrainingDiverged: train/loss is nan"))
    spec = {"name": name, "base": {"loss": {"lam": 0.05}}, "search": {"loss.lam": {"type": "loguniform", "low": 0.005, "high": 0.5},
            "optim.lr": {"type": "loguniform", "low": 3e-4, "high": 5e-3}}, "selection": {"criterion": "auto"}}
    return SweepRecords(name, spec, tuple(trials), "/nonexistent/sweep")


def with_near_tie(records: SweepRecords, seed: int = 0) -> SweepRecords:
    """``records`` whose completed trials carry the objective on 200 resamples: each trial its
    objective plus a scatter shared by all (so that two trials keep their order on every
    resample), except the runner-up by the objective, whose values scatter around the best
    trial's, just below it: a near-tie of the choice."""
    ranked = sorted((t for t in records.trials if t.status == "completed"), key=lambda t: -t.metrics[OBJECTIVE])
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, 0.5, 200)
    values = {t.trial_id: t.metrics[OBJECTIVE] + shared for t in ranked}
    values[ranked[1].trial_id] = ranked[0].metrics[OBJECTIVE] - 0.05 + shared + rng.normal(0.0, 0.3, 200)
    return replace(records, trials=tuple(
        replace(t, details={**t.details, OBJECTIVE_RESAMPLES: pack_floats(values[t.trial_id])}) if t.trial_id in values else t for t in records.trials))


# The figures of a report whose records have something for each to show, in the page's order.
REPORT_FIGURES = ["criteria", "accuracy_vs_lambda", "search_over_time", "importance", "parallel"]


def new_tracking_db(template: Path, directory: Path) -> str:
    """A copy of the SQLite tracking database ``template`` as ``directory/mlflow.db``; its URI."""
    shutil.copyfile(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def tracked_records(uri: str, n: int, name: str, sweep_dir: str):
    """``synthetic_records(n)`` logged to MLflow at ``uri`` as a sweep logs them (a parent run,
    one child per trial with its config, params and metrics); returns the tracker and the
    records that point at those runs."""
    from lejepa_tune.tracking import SweepTracker

    synthetic = synthetic_records(n, name=name)
    tracker = SweepTracker(uri, name, f"{name}_1", sweep_dir)
    run_ids = {}
    for t in synthetic.trials:
        run_ids[t.trial_id] = tracker.start_trial(t.trial_id, {"loss": {"lam": t.params["loss.lam"]}, "optim": {"lr": t.params["optim.lr"]}}, t.params)
        tracker.log_metrics(run_ids[t.trial_id], dict(t.metrics), step=t.epochs)
        tracker.end_run(run_ids[t.trial_id])
    tracker.finish()
    trials = tuple(replace(t, run_id=run_ids[t.trial_id]) for t in synthetic.trials)
    return tracker, replace(synthetic, trials=trials, tracking_uri=uri, parent_run_id=tracker.parent_run_id, experiment=name, elapsed_s=12.5)


def mlflow_server_env() -> dict[str, str]:
    """The environment for an ``mlflow server`` or ``mlflow ui`` a test starts: without MLflow's
    job runner, eight more processes (about 16 core-seconds to start here) that run MLflow's
    GenAI jobs, which the UI of training runs never asks for."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_for(url: str, seconds: float = 120) -> None:
    """Until ``url`` answers (a server a test started is up), or TimeoutError."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def stop_tree(pid: int) -> None:
    """Kills a process and every process it started (MLflow's server starts job consumers in
    sessions of their own, which a process-group kill would miss)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in [*root.children(recursive=True), root]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def train_like_a_worker(cfg) -> dict:
    """``train(cfg)`` in this process with one torch thread, as a 1-CPU Ray Train worker runs it
    (another thread count sums in another order, so the numbers differ in the last digits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, LocalSink(cfg, verbose=False))
    finally:
        torch.set_num_threads(threads)


def free_cpus_within(ray_module, seconds: float, wanted: float = 2) -> float:
    """The CPUs free in the Ray ``ray_module`` is connected to, once ``wanted`` of them are or
    ``seconds`` have passed: freed resources reach the scheduler's view a moment later."""
    deadline = time.monotonic() + seconds
    while ray_module.available_resources().get("CPU", 0) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray_module.available_resources().get("CPU", 0)
