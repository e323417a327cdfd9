"""Faults, for real: a Ray Train worker killed with SIGKILL mid-trial, and the driver of
`lejepa-tune run` killed with SIGKILL (with its whole local Ray) and resumed with --resume.
Real Ray, a real MLflow SQLite store, a real Optuna study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient

from lejepa_tune.metrics import CHECKPOINT_FILES, EPOCH, LOSS, OBJECTIVE, REFERENCE_ACC
from lejepa_tune.records import read_records
from lejepa_tune.search_space import sweep_spec_from_dict, trial_config
from lejepa_tune.sweep import run_sweep
from tiny import LAM_SEARCH, TINY_BASE, free_cpus_within, train_like_a_worker, write_space

pytestmark = pytest.mark.slow

# Epochs long enough (16 steps) for a kill to land inside one.
BASE = {**TINY_BASE, "data": {"max_train_samples": 512, "max_val_samples": 60}, "train": {"epochs": 4, "batch_size": 32}}


def children(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.`lejepa_tune.role` = 'trial'")


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, LOSS))


def train_workers_of(pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes of the Ray instance this process started."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::RayTrainWorker") and any(p.pid == pid for p in proc.parents()):
            found.append(proc)
    return found


def ctrl_c_after_the_first_epoch(space: Path, experiment: str, common: list[str], cwd: Path) -> tuple[int, str]:
    """``lejepa-tune run SPACE`` sent SIGINT (Ctrl+C) once a trial has logged its first epoch:
    its exit status and output."""
    driver = subprocess.Popen([sys.executable, "-m", "lejepa_tune", "run", str(space), *common], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(common[common.index("--tracking-uri") + 1])
    deadline = time.time() + 240
    while time.time() < deadline and not any(1 in epochs_logged(client, r.info.run_id) for r in children(client, experiment)):
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    out = driver.communicate(timeout=120)[0]
    return driver.returncode, out


def test_a_killed_worker_is_restarted_from_its_checkpoint(local_ray, tmp_path, mlflow_uri):
    spec = sweep_spec_from_dict({"name": "killed_worker", "base": BASE, "search": {}, "tune": {"num_samples": 1, "max_failures": 2}})
    uri = mlflow_uri
    client, killed = MlflowClient(uri), []

    def kill_after_epoch_2() -> None:  # SIGKILL to the worker, right after epoch 2 was reported
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            runs = children(client, "killed_worker")
            if runs and 2 in epochs_logged(client, runs[0].info.run_id):
                for proc in train_workers_of(os.getpid()):
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_epoch_2, daemon=True)
    killer.start()
    records = run_sweep(spec, storage_path=str(tmp_path / "sweeps"), tracking_uri=uri, include_dashboard=False, verbose=0)
    killer.join(timeout=1)
    assert killed, "no worker was killed: the test proves nothing"

    (trial,) = records.trials
    assert trial.status == "completed" and trial.epochs == 4
    (run,) = children(client, "killed_worker")  # one MLflow run, not two
    assert epochs_logged(client, run.info.run_id) == [1, 2, 3, 4]  # every epoch once
    # The restarted worker reported its checkpoint's epoch again (Tune saw one epoch twice), with
    # its metrics only: the sizes of the checkpoint's files, which metrics.json holds, are not.
    (result,) = Path(records.sweep_dir).glob("tune/*/result.json")
    reported = [json.loads(line) for line in result.read_text().splitlines()]
    epochs = [r[EPOCH] for r in reported]
    assert epochs == sorted(epochs) and sorted(set(epochs)) == [1, 2, 3, 4] and len(epochs) == 5, epochs
    assert not any(CHECKPOINT_FILES in r for r in reported)
    # The same seed, never interrupted: the same numbers, since every random stream of an epoch
    # is seeded by (seed, epoch) and the model, optimiser and counters come from the checkpoint.
    whole = train_like_a_worker(trial_config(spec, {}, str(tmp_path / "uninterrupted")))
    for key in (LOSS, OBJECTIVE, REFERENCE_ACC):
        assert trial.metrics[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key


def test_a_killed_driver_resumes_without_losing_or_repeating_work(tmp_path, mlflow_uri):
    space = write_space(tmp_path, "killed_driver", LAM_SEARCH, {"num_samples": 3, "seed": 0, "max_concurrent_trials": 2},
                        base={"data": {"max_train_samples": 256, "max_val_samples": 60}, "train": {"epochs": 2, "batch_size": 32}})
    uri = mlflow_uri
    common = ["--tracking-uri", uri, "--storage-path", str(tmp_path / "sweeps"), "--no-dashboard"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "lejepa_tune", "run", str(space), *common], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(uri)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.info.status == "FINISHED" for r in children(client, "killed_driver")):
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    finished_before = {r.data.tags["lejepa_tune.trial_id"] for r in children(client, "killed_driver") if r.info.status == "FINISHED"}
    assert finished_before, "no trial finished before the deadline"
    killed_at = time.time()
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()

    resumed = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", "--resume", str(sweep_dir), *common],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    records = read_records(str(sweep_dir))
    assert len(records.trials) == 3 and all(t.status == "completed" for t in records.trials)
    exp = client.get_experiment_by_name("killed_driver")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # re-attached, not duplicated
    assert sorted(r.data.tags["lejepa_tune.trial_id"] for r in kids) == sorted(t.trial_id for t in records.trials)
    for run in kids:
        assert run.info.status == "FINISHED" and epochs_logged(client, run.info.run_id) == [1, 2]
    # Tune's own result file of every trial holds its reports from before the kill too (the
    # resumed driver's Ray is a new one, where a trial started again begins a new file).
    for trial in records.trials:
        (result,) = sweep_dir.glob(f"tune/*{trial.trial_id}*/result.json")
        epochs = [json.loads(line)[EPOCH] for line in result.read_text().splitlines()]
        assert epochs[0] == 1 and epochs == sorted(epochs) and set(epochs) == {1, 2}, (trial.trial_id, epochs)
    # Finished trials were not run again: nothing was written in their Ray Train runs since.
    for trial_id in finished_before:
        run_dir = sweep_dir / "train" / f"train-{trial_id}"
        assert max(p.stat().st_mtime for p in run_dir.rglob("*")) < killed_at, trial_id
    # The Optuna study went on: three trials, none duplicated or lost, each linked to its run.
    study = optuna.load_study(study_name="killed_driver", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(t.trial_id for t in records.trials)
    assert all(t.user_attrs.get("mlflow_run_id") in {r.info.run_id for r in kids} for t in complete)
    # A trial asked for in the last second before the kill, which Tune had not written down, is
    # closed as failed, with the reason; none is left running.
    assert all(t.state.name == "FAIL" and "lost" in t.user_attrs for t in study.trials if t.state.name != "COMPLETE")
    # The final selection covers all trials.
    parent = client.get_run(parents[0].info.run_id)
    assert parent.data.tags["lejepa_tune.choice"] in {t.trial_id for t in records.trials}
    assert "selection/objective/spearman" in parent.data.metrics
    assert {EPOCH, OBJECTIVE} <= set(kids[0].data.metrics)


def test_successive_halving_interrupted_at_its_rung_resumes_and_decides_it(local_ray, tmp_path, mlflow_uri):
    """Ctrl+C while trials of a ``sha`` sweep wait, paused, at the first rung: Tune saves them as
    unfinished, and ``--resume`` hands them back pending. The rebuilt scheduler holds them,
    paused, at the rung with their last results, and starts the trials that had not reached it.
    The rung is then decided as an uninterrupted sweep decides it: the best goes on to the last
    epoch (started again from its checkpoint), the others stop at the rung, those that waited
    there without being started again; every epoch logged once, Optuna told each once."""
    space = write_space(tmp_path, "sha_resumed", {"optim.lr": {"type": "loguniform", "low": 1e-8, "high": 1e-2}},
                        {"num_samples": 3, "scheduler": "sha", "grace_period": 1, "reduction_factor": 3,
                         "points_to_evaluate": [{"optim.lr": 2e-3}, {"optim.lr": 5e-3}, {"optim.lr": 1e-8}]},
                        base={"train": {"epochs": 2, "batch_size": 32}})
    common = ["--tracking-uri", mlflow_uri, "--storage-path", str(tmp_path / "sweeps"), "--address", local_ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    returncode, out = ctrl_c_after_the_first_epoch(space, "sha_resumed", common, tmp_path)
    assert returncode == 130, out[-3000:]
    client = MlflowClient(mlflow_uri)
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    before = {r.data.tags["lejepa_tune.trial_id"]: epochs_logged(client, r.info.run_id) for r in children(client, "sha_resumed")}
    assert [1] in before.values() and not any(2 in e for e in before.values()), before  # a trial waited at the rung, none went past it

    resumed = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", "--resume", str(sweep_dir), *common],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Tune's warning of the trials it cannot read as it restores, which lists every trial started
    # without a report before the interrupt (usually the third): no fault, left out.
    assert "Failed to fetch metrics" not in resumed.stderr, resumed.stderr[-3000:]
    records = read_records(str(sweep_dir))
    by_status: dict[str, list] = {}
    for t in records.trials:
        by_status.setdefault(t.status, []).append(t)
    (kept,), stopped = by_status["completed"], by_status["stopped"]
    assert kept.epochs == 2 and len(stopped) == 2 and all(t.epochs == 1 for t in stopped)
    for t in stopped:  # one report, over both runs: a trial that waited at the rung was not started again only to be stopped
        (results,) = sweep_dir.glob(f"tune/*{t.trial_id}*/result.json")
        assert len(results.read_text().splitlines()) == 1, (t.trial_id, before)
    runs = children(client, "sha_resumed")
    assert len(runs) == 3
    logged = {r.data.tags["lejepa_tune.trial_id"]: epochs_logged(client, r.info.run_id) for r in runs}
    assert logged[kept.trial_id] == [1, 2] and all(logged[t.trial_id] == [1] for t in stopped)
    at_rung = {r.data.tags["lejepa_tune.trial_id"]: {m.step: m.value for m in client.get_metric_history(r.info.run_id, OBJECTIVE)}[1] for r in runs}
    assert all(at_rung[kept.trial_id] > at_rung[t.trial_id] for t in stopped)  # the best at the rung went on
    study = optuna.load_study(study_name="sha_resumed", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert states[kept.trial_id].state.name == "COMPLETE" and sorted(states[kept.trial_id].intermediate_values) == [1, 2]
    assert states[kept.trial_id].intermediate_values[2] == pytest.approx(kept.metrics[OBJECTIVE])
    assert all(states[t.trial_id].state.name == "PRUNED" for t in stopped)
    assert free_cpus_within(local_ray, 30) == 2  # paused and stopped trials gave their CPUs back


def test_ctrl_c_ends_the_sweep_with_its_state_saved_and_resume_finishes_it(local_ray, tmp_path, mlflow_uri):
    """SIGINT (Ctrl+C) to `lejepa-tune run` mid-trial: Tune saves its state and stops the trial;
    the command says it was interrupted and how to continue, exits 130, and marks the sweep's
    and the trial's MLflow runs KILLED, not FINISHED or left RUNNING. `--resume` then finishes
    the trial from its checkpoint: every epoch logged once, the Optuna trial completed."""
    space = write_space(tmp_path, "ctrl_c", LAM_SEARCH, {"num_samples": 1, "seed": 0}, base=BASE)
    uri = mlflow_uri
    common = ["--tracking-uri", uri, "--storage-path", str(tmp_path / "sweeps"), "--address", local_ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    returncode, out = ctrl_c_after_the_first_epoch(space, "ctrl_c", common, tmp_path)
    client = MlflowClient(uri)
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert returncode == 130, out[-3000:]
    assert out.rstrip().splitlines()[-1] == f"Interrupted: continue it with: lejepa-tune run --resume {sweep_dir}", out[-3000:]
    assert "Tuner.restore" not in out, out[-3000:]  # Tune's own hint, which would resume without MLflow or Optuna
    (run,) = children(client, "ctrl_c")
    parent = client.search_runs([run.info.experiment_id], "tags.`lejepa_tune.role` = 'sweep'")[0]
    assert (parent.info.status, client.get_run(run.info.run_id).info.status) == ("KILLED", "KILLED")
    stopped_at = max(epochs_logged(client, run.info.run_id))
    assert stopped_at < 4, "the trial ended before the interrupt: the test proves nothing"
    (trial,) = read_records(str(sweep_dir)).trials  # told from a trial a scheduler stopped
    assert (trial.status, trial.epochs) == ("interrupted", stopped_at)
    assert f"Sweep 'ctrl_c': 1 trial (1 interrupted; {stopped_at} of their 4 epochs trained, {stopped_at / 4:.0%}) in " in out, out[-3000:]

    resumed = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", "--resume", str(sweep_dir), *common],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    (trial,) = read_records(str(sweep_dir)).trials
    assert trial.status == "completed" and trial.epochs == 4
    assert client.get_run(run.info.run_id).info.status == "FINISHED" and epochs_logged(client, run.info.run_id) == [1, 2, 3, 4]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    study = optuna.load_study(study_name="ctrl_c", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_two_sweeps_started_together_share_one_mlflow_database(local_ray, tmp_path):
    """Two `lejepa-tune run` in one directory at the same moment, both on the default
    sqlite:///mlflow.db, on one Ray cluster (the session's): both complete, with all their runs
    and metrics. (A `run` that starts its own Ray: the killed driver above.) One searches with
    TPE, the other at random (`tune.searcher: random`)."""
    spaces = [write_space(tmp_path, name, LAM_SEARCH, {"num_samples": 1, "searcher": searcher}) for name, searcher in (("left", "tpe"), ("right", "random"))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    address = ["--address", local_ray.get_runtime_context().gcs_address]
    procs = [subprocess.Popen([sys.executable, "-m", "lejepa_tune", "run", str(p), *address, "--no-dashboard"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in spaces]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    # What a person sees: Tune's table and the summary, not Ray Train's per-report INFO lines.
    assert not any("Reporting training result" in o for o in outputs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("left", "right"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        kids = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "trial"]
        assert len(runs) == 2 and len(kids) == 1 and all(r.info.status == "FINISHED" for r in runs)
        for run in kids:
            assert epochs_logged(client, run.info.run_id) == [1] and OBJECTIVE in run.data.metrics
    assert len(list((tmp_path / "sweeps").iterdir())) == 2

