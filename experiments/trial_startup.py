"""Where a trial's start-up goes, measured piece by piece and as a whole.

A trial of a sweep is Tune's function trainable (lejepa_tune.trial.trial_driver), which starts
Ray Train's controller, which starts the Train workers and Ray Train's helper actors; the workers
import the training code, get the dataset, build the model and the label-free set, join the process
group and take the first step. This script times:

* the imports a fresh Python process pays for the trial's module and its heavy dependencies;
* a bare Ray actor's start (a new process) and the same actor importing the trial's module;
* the worker's own set-up in one process: data, model, label-free set, optimiser, first step;
* whole trials of a real sweep: ``time/startup_s``, from the trial function's start to the
  workers' first training step, from Tune's start of the trial to its first result, and from
  its last result to its end (Ray Train's controller sees a finished run at its next poll);
* every process a trial starts (Tune's actor, Ray Train's controller, workers and helper actors),
  with the seconds of imports each one pays, from a second sweep of one trial whose Ray processes
  run with ``PYTHONPROFILEIMPORTTIME`` (its own, slower, start-up is not reported); and the same
  seconds by the package whose modules took them (lejepa-tune's own, Ray's, torch's, ...).

The machine's speed (``machine_speed.py``) is printed before and after: start-up moves with it.

    python experiments/trial_startup.py                # the README's breakdown (~3 min on 2 cores)
    python experiments/trial_startup.py --smoke-test   # tiny, for CI
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from lejepa_tune.report import format_table
from machine_speed import fresh_import_seconds, speed_line

IMPORTS = ["torch", "timm", "ray.train", "lejepa_tune.trial", "mlflow", "optuna"]
# Ray processes that are the cluster's, not the trial's: idle workers and the autoscaling coordinator.
CLUSTER_PROCESSES = {"(idle worker)", "_AutoscalingCoordinatorActor"}
TOP_PACKAGES = 8
# Listed whatever their share: the trial's own code and its model library.
OWN_PACKAGES = ["lejepa_tune", "timm"]


@ray.remote(num_cpus=0)
class Probe:
    def ready(self) -> float:
        return time.time()

    def load(self) -> float:
        import lejepa_tune.trial  # noqa: F401 - what a trial's actors import

        return time.time()


def actor_seconds() -> tuple[float, float]:
    """A new actor's start until it answers, and until it has imported the trial's module."""
    start = time.time()
    probe = Probe.remote()
    ready = ray.get(probe.ready.remote()) - start
    loaded = ray.get(probe.load.remote()) - start
    ray.kill(probe)
    return ready, loaded


def setup_seconds(overrides: list[str]) -> dict[str, float]:
    """The worker's set-up, step by step, in this process."""
    import torch

    from lejepa_tune.config import load_config
    from lejepa_tune.data import build_datasets
    from lejepa_tune.labelfree import LabelFreeSet
    from lejepa_tune.models import build_model
    from lejepa_tune.train import LocalSink, build_optimizer, train

    cfg = load_config(None, overrides)
    times, t = {}, time.perf_counter()
    splits = build_datasets(cfg.data)
    times["dataset (decode digits)"], t = time.perf_counter() - t, time.perf_counter()
    model = build_model(cfg.model, splits.num_classes)
    build_optimizer(model, cfg.optim)
    times["model and optimiser"], t = time.perf_counter() - t, time.perf_counter()
    LabelFreeSet(splits.train, cfg.labelfree, cfg.views)
    times["label-free set"], t = time.perf_counter() - t, time.perf_counter()
    first = {}

    class FirstStep(LocalSink):
        def report(self, metrics, checkpoint):
            first.setdefault("startup", metrics["time/startup_s"])

    sink = FirstStep(cfg, verbose=False)
    torch.manual_seed(0)
    train(cfg, sink, data=splits)
    times["train(): entry to first step (data given)"] = first["startup"]
    return times


@contextlib.contextmanager
def output_to(path: Path):
    """Meanwhile this process's stdout and stderr go to ``path``, at the file descriptors: the
    sweep's own lines, Tune's, MLflow's and Optuna's, which would split the tables apart."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved_fd in zip((1, 2), saved):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)


def sweep_seconds(root: Path, overrides: list[str], trials: int) -> tuple[list[float], list[float], list[float], float]:
    """Of each trial of a real sweep: ``time/startup_s``, Tune's start of the trial to its first
    result, and its last result to its end (both as the driver saw them: MLflow's timestamps);
    and the sweep's own seconds."""
    from mlflow import MlflowClient

    from lejepa_tune.metrics import OBJECTIVE
    from lejepa_tune.search_space import load_sweep_spec
    from lejepa_tune.sweep import run_sweep
    from lejepa_tune.tracking import ROLE_TAG

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda_sweep.yaml"
    spec = load_sweep_spec(space, [*overrides, f"tune.num_samples={trials}", "train.epochs=1"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with output_to(root / "sweep.log"):
        records = run_sweep(spec, storage_path=str(root / "sweeps"), tracking_uri=uri, include_dashboard=False, verbose=0)
    startup = [t.metrics["time/startup_s"] for t in records.trials if "time/startup_s" in t.metrics]
    first = []
    for result in (Path(records.sweep_dir) / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        if rows:
            first.append(rows[0]["time_total_s"])  # Tune: the trial's start to its first result
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    last = {r.info.run_id: max((m.timestamp for m in client.get_metric_history(r.info.run_id, OBJECTIVE)), default=None) for r in runs}
    tail = [(r.info.end_time - last[r.info.run_id]) / 1000 for r in runs if r.info.end_time and last[r.info.run_id]]
    return startup, first, tail, records.elapsed_s


def local_ray(**kwargs) -> None:
    """A Ray of this machine with 2 CPUs (two trials at a time, as on the machine the README's
    figures come from), quiet; a new one, never a cluster found by auto-detection."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kwargs)


def process_imports(root: Path, overrides: list[str], trials: int) -> tuple[list[list], list[list]]:
    """Per kind of Ray process a sweep of ``trials`` trials started: how many, and the mean
    seconds of imports each paid (Python's own import profile, read from Ray's worker logs);
    and the same seconds over the trial's processes, by the top-level package of the module
    that took them (each module's own time, not its imports')."""
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # read at interpreter start: Ray's processes, not this one
    try:
        local_ray(_temp_dir=str(root / "ray"))
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]
    try:
        sweep_seconds(root / "profiled", overrides, trials)
    finally:
        ray.shutdown()
    seconds: dict[str, list[float]] = {}
    packages: dict[str, float] = {}
    for out in (root / "ray" / "session_latest" / "logs").glob("worker-*.out"):
        names = sorted(set(re.findall(r":actor_name:(\w+)", out.read_text())) - {"ImplicitFunc"}) or ["(idle worker)"]
        err = out.with_suffix(".err").read_text() if out.with_suffix(".err").exists() else ""
        own = [(int(t), module) for t, module in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \|\s+([\w.]+)", err, flags=re.M)]
        seconds.setdefault(" + ".join(names), []).append(sum(t for t, _ in own) / 1e6)
        if not set(names) & CLUSTER_PROCESSES:
            for t, module in own:
                package = module.split(".")[0]
                packages[package] = packages.get(package, 0.0) + t / 1e6
    kinds = [[kind, len(s), statistics.mean(s)] for kind, s in sorted(seconds.items(), key=lambda kv: -statistics.mean(kv[1]))]
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])
    top = [p for p, _ in ranked[:TOP_PACKAGES]]
    shown = top + [p for p in OWN_PACKAGES if p not in top]
    rest = [s for p, s in ranked if p not in shown]
    by_package = [[p, packages.get(p, 0.0)] for p in shown]
    by_package += [[f"the other {len(rest)} packages", sum(rest)], ["all", sum(packages.values())]]
    return kinds, by_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--address", default=None, help="a running Ray cluster to join (default: start one on this machine)")
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_startup_"))
    smoke = ["data.max_train_samples=256", "data.max_val_samples=60", "labelfree.num_images=64"] if args.smoke_test else []
    print(f"before, {speed_line(1 if args.smoke_test else 3)}")
    rows = [[f"import {m} (fresh process)", fresh_import_seconds(m)] for m in (IMPORTS[-1:] if args.smoke_test else IMPORTS)]
    if args.address:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    else:
        local_ray()
    ready, loaded = actor_seconds()
    rows += [["a new Ray actor answers", ready], ["... and has imported lejepa_tune.trial", loaded]]
    rows += [[k, v] for k, v in setup_seconds([*smoke, "train.epochs=1", "eval.enabled=false", f"train.output_dir={root / 'setup'}"]).items()]
    startup, first, tail, elapsed = sweep_seconds(root, smoke, 1 if args.smoke_test else args.trials)
    ray.shutdown()
    rows += [[f"sweep: trial function start to first step (time/startup_s, median of {len(startup)})", statistics.median(startup)],
             [f"sweep: Tune's trial start to its first result (median of {len(first)})", statistics.median(first)],
             [f"sweep: a trial's last result to its end (median of {len(tail)})", statistics.median(tail)],
             [f"sweep: the whole sweep ({len(startup)} trials of 1 epoch)", elapsed]]
    print(format_table(["what", "seconds"], [[w, f"{s:.2f}"] for w, s in rows]))
    print(f"\ntime/startup_s of every trial: {' '.join(f'{s:.1f}' for s in startup)}")
    print(f"the sweep's own output: {root / 'sweep.log'}")
    if args.address is None:  # the profile needs Ray processes started with its variable
        processes, packages = process_imports(root, smoke, 1)
        print("\nThe processes a sweep of one trial started (alone: no other trial competes for the cores), and the "
              "seconds each spent importing (Python's import profile, which slows them a little):")
        print(format_table(["process (Ray actor)", "count", "seconds of imports each"], [[k, n, f"{s:.2f}"] for k, n, s in processes]))
        print("\nThe same trial's processes' imports, by the package whose modules took the time:")
        print(format_table(["package", "seconds of imports, all the trial's processes"], [[p, f"{s:.2f}"] for p, s in packages]))
    if not args.smoke_test:
        print(f"\nafterwards, {speed_line()}")


if __name__ == "__main__":
    main()
