"""Beyond one machine, on one machine: a real 2-node Ray cluster (``ray.cluster_utils.Cluster``:
two raylets, one CPU each), a sweep that joins it with ``--address`` and runs 2-worker DDP trials
that can only fit across both nodes, storage given as a ``file://`` URI, and everything after
the sweep read back through that URI alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lejepa_tune.cli import main
from lejepa_tune.metrics import LOSS, OBJECTIVE
from lejepa_tune.records import read_records
from lejepa_tune.search_space import load_sweep_spec, trial_config
from tiny import train_like_a_worker, write_space

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """One cluster for the module's tests (each start takes 7-8 s): neither test changes it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_worker_trials_across_two_nodes_with_storage_by_uri(two_nodes, tmp_path, monkeypatch, capsys):
    space = write_space(tmp_path, "two_nodes", {}, {"num_samples": 1}, {"num_workers": 2, "cpus_per_worker": 1})
    storage = f"file://{tmp_path / 'store'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Each node holds one CPU and each worker asks for one: the trial's two ranks must land on
    # the two nodes.
    run = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", space.name, "--address", two_nodes.address, "--storage-path", storage,
                          "--tracking-uri", uri, "--no-dashboard"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    (sweep,) = (tmp_path / "store").iterdir()
    sweep_uri = f"{storage}/{sweep.name}"
    records = read_records(sweep_uri)
    (trial,) = records.trials
    assert records.sweep_dir == sweep_uri and trial.status == "completed"
    assert trial.checkpoint.startswith("file://")  # the one copy, Ray's, by URI

    # The same trial in one process (one thread, as each worker had) computes the same loss.
    cfg = trial_config(load_sweep_spec(space), {}, str(tmp_path / "single"))
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


def test_a_sweep_given_no_address_starts_its_own_ray_beside_a_running_cluster(two_nodes):
    """`ray start` (here, the cluster's head) leaves its address where a bare `ray.init()`
    finds and joins it: a sweep without --address (nor RAY_ADDRESS) would have run its trials on
    that cluster, and died with it (seen when two test workers ran the two-node cluster and a
    killed driver at once). It starts a Ray of its own instead."""
    code = ("import ray; from lejepa_tune.sweep import init_ray; "
            "init_ray(include_dashboard=False, num_cpus=1, logging_level='ERROR'); print(ray.get_runtime_context().gcs_address)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.split()[-1] != two_nodes.address
