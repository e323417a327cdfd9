"""Beyond one machine, on one machine: a real 2-node Ray cluster started as a person starts one
(``ray start --head``, then ``ray start --address`` for the second node; one CPU each), with
token authentication and the dashboard. One sweep joins it with ``--address`` and runs a 2-worker
DDP trial that can only fit across both nodes, with its storage given as a ``file://`` URI; the
tests read everything after the sweep back through that URI alone, look at the cluster's
dashboard in a headless Chromium, and start a sweep without an address beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from lejepa_tune.cli import main
from lejepa_tune.metrics import LOSS, OBJECTIVE
from lejepa_tune.records import read_records
from lejepa_tune.search_space import load_sweep_spec, trial_config
from ranks import free_port
from tiny import new_tracking_db, train_like_a_worker, wait_for, write_space

pytestmark = pytest.mark.slow

TOKEN = "lejepa-test-token-0123456789"


@dataclass
class Cluster:
    address: str  # the head's GCS, as `--address` takes it
    dashboard: str  # the dashboard's URL
    env: dict[str, str]  # the environment `ray start` ran in: its token, its temporary directory


@dataclass
class Sweep:
    directory: Path  # the test's directory: the space file, the MLflow database
    storage: str  # --storage-path, a file:// URI
    space: Path
    run: subprocess.CompletedProcess


def ray_start(args: list[str], env: dict[str, str]) -> None:
    ray_cli = str(Path(sys.executable).parent / "ray")
    started = subprocess.run([ray_cli, "start", "--num-cpus=1", "--disable-usage-stats", *args], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module (each node's start takes 7-10 s); no test changes it. Its own
    temporary directory (``RAY_TMPDIR``, short: Ray's socket paths live below it) holds its
    sessions and the address `ray start` leaves for a bare ``ray.init()``, and tells its
    processes apart from every other Ray on the machine."""
    temp = tempfile.mkdtemp(prefix="rd", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    gcs, port = free_port(), free_port()
    try:
        ray_start(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}", "--include-dashboard=true"], env)
        ray_start([f"--address=127.0.0.1:{gcs}"], env)
        yield Cluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{port}", env)
    finally:  # this cluster's processes only (`ray stop` would stop every Ray on the machine)
        for proc in psutil.process_iter(["cmdline"]):
            if any(temp in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sweep(cluster, tmp_path_factory, mlflow_template):
    """`lejepa-tune run --address` on the cluster: one trial of two workers, one CPU each, so
    that its two ranks land on the two nodes."""
    directory = tmp_path_factory.mktemp("two_nodes")
    uri = new_tracking_db(mlflow_template, directory)
    space = write_space(directory, "two_nodes", {}, {"num_samples": 1}, {"num_workers": 2, "cpus_per_worker": 1})
    storage = f"file://{directory / 'store'}"
    run = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", space.name, "--address", cluster.address, "--storage-path", storage,
                          "--tracking-uri", uri],
                         cwd=directory, env={**cluster.env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=900)
    return Sweep(directory, storage, space, run)


def test_two_worker_trials_across_two_nodes_with_storage_by_uri(sweep, tmp_path, monkeypatch, capsys):
    assert sweep.run.returncode == 0, sweep.run.stdout[-3000:] + sweep.run.stderr[-3000:]
    (stored,) = (sweep.directory / "store").iterdir()
    sweep_uri = f"{sweep.storage}/{stored.name}"
    records = read_records(sweep_uri)
    (trial,) = records.trials
    assert records.sweep_dir == sweep_uri and trial.status == "completed"
    assert trial.checkpoint.startswith("file://")  # the one copy, Ray's, by URI

    # The same trial in one process (one thread, as each worker had) computes the same loss.
    cfg = trial_config(load_sweep_spec(sweep.space), {}, str(tmp_path / "single"))
    single = train_like_a_worker(cfg)
    assert trial.metrics[LOSS] == pytest.approx(single[LOSS], rel=2e-3)
    assert trial.metrics[OBJECTIVE] == pytest.approx(single[OBJECTIVE], rel=2e-2)

    # The report and the export read the sweep through its URI only.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["report", sweep_uri, "--output-dir", str(tmp_path / "report")]) == 0
    assert f"choice: {trial.trial_id}" in capsys.readouterr().out
    assert main(["select", sweep_uri, "--export", str(tmp_path / "chosen")]) == 0
    assert json.loads((tmp_path / "chosen" / "selection.json").read_text())["checkpoint"] == trial.checkpoint
    assert (tmp_path / "chosen" / "model.safetensors").is_file()


def test_the_dashboard_answers_behind_its_token_and_shows_the_sweeps_trial(cluster, sweep, browser, tmp_path):
    """What `run` prints of the dashboard names the command that prints the token, not the token;
    the dashboard asks for it, and behind it the Actors page shows the trial's processes (Tune's
    trial actor, Ray Train's controller and its workers)."""
    from lejepa_tune.sweep import dashboard_hint

    assert sweep.run.returncode == 0, sweep.run.stdout[-3000:] + sweep.run.stderr[-3000:]
    wait_for(f"{cluster.dashboard}/api/authentication_mode")
    hint = dashboard_hint(cluster.dashboard)
    assert "ray get-auth-token" in hint and TOKEN not in hint
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(cluster.dashboard)
    page.get_by_text("Authentication Token Required").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "ray_dialog.png"))
    context = browser.new_context(viewport={"width": 1400, "height": 900}, extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
    authed = context.new_page()
    authed.goto(f"{cluster.dashboard}/#/actors")
    authed.get_by_text("RayTrainWorker").first.wait_for(timeout=60_000)
    body = authed.inner_text("body")
    assert "Authentication Token Required" not in body
    assert all(name in body for name in ("ImplicitFunc", "trial_driver", "TrainController", "RayTrainWorker")), body[:2000]
    authed.screenshot(path=str(tmp_path / "ray_actors.png"), full_page=True)


def test_a_sweep_given_no_address_starts_its_own_ray_beside_a_running_cluster(cluster):
    """`ray start` (here, the cluster's head) leaves its address where a bare `ray.init()`
    finds and joins it: a sweep without --address (nor RAY_ADDRESS) would have run its trials on
    that cluster, and died with it (seen when two test workers ran the two-node cluster and a
    killed driver at once). It starts a Ray of its own instead."""
    # The address is there to be found, in the cluster's temporary directory (without it, the
    # test would prove nothing).
    found = (Path(cluster.env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").read_text().strip()
    assert found.rsplit(":", 1)[1] == cluster.address.rsplit(":", 1)[1]  # the head's GCS, at the node's own IP
    code = ("import ray; from lejepa_tune.sweep import init_ray; "
            "init_ray(include_dashboard=False, num_cpus=1, logging_level='ERROR'); print(ray.get_runtime_context().gcs_address)")
    started = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.split()[-1] != found


def test_a_sweep_without_the_clusters_token_is_refused_in_one_line(cluster, tmp_path):
    """A cluster that asks for a token, joined by a process that has none: one line naming
    --address and what to set, exit 2, and no sweep begun (it was a traceback after Ray's retries).
    Ray's retries are cut to one try (``RAY_NUM_REDIS_GET_RETRIES``: its default, 20, takes as
    many seconds)."""
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    space = write_space(tmp_path, "no_token", {}, {"num_samples": 1})
    run = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", space.name, "--address", cluster.address, "--no-dashboard",
                          "--storage-path", str(tmp_path / "sweeps"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                         cwd=tmp_path, env={**env, "RAY_NUM_REDIS_GET_RETRIES": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr.rstrip().splitlines()[-1] == (
        f"lejepa-tune: error: --address: {cluster.address}: the Ray cluster did not take this process's token (none, or not its own): "
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to what `ray get-auth-token` prints on its head node")
    assert "Traceback" not in run.stderr and not (tmp_path / "sweeps").exists()
