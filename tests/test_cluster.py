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
import yaml

from lejepa_tune.metrics import LOSS, OBJECTIVE
from lejepa_tune.records import read_records
from lejepa_tune.search_space import sweep_spec_from_dict, trial_config
from tiny import TINY_BASE, train_like_a_worker

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_worker_trials_across_two_nodes_with_storage_by_uri(two_nodes, tmp_path):
    base = {**TINY_BASE, "eval": {"linear_max_iter": 100}}
    space = {"name": "two_nodes", "base": base, "search": {}, "tune": {"num_samples": 1}, "resources": {"num_workers": 2, "cpus_per_worker": 1}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"file://{tmp_path / 'store'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Each node holds one CPU and each worker asks for one: the trial's two ranks must land on
    # the two nodes.
    run = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", "space.yaml", "--address", two_nodes.address, "--storage-path", storage,
                          "--tracking-uri", uri, "--no-dashboard"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    (sweep,) = (tmp_path / "store").iterdir()
    sweep_uri = f"{storage}/{sweep.name}"
    records = read_records(sweep_uri)
    (trial,) = records.trials
    assert records.sweep_dir == sweep_uri and trial.status == "completed"
    assert trial.checkpoint.startswith("file://")  # the one copy, Ray's, by URI

    # The same trial in one process (one thread, as each worker had) computes the same loss.
    cfg = trial_config(sweep_spec_from_dict(space), {}, str(tmp_path / "single"))
    single = train_like_a_worker(cfg)
    assert trial.metrics[LOSS] == pytest.approx(single[LOSS], rel=2e-3)
    assert trial.metrics[OBJECTIVE] == pytest.approx(single[OBJECTIVE], rel=2e-2)

    # The report and the export read the sweep through its URI only.
    report = subprocess.run([sys.executable, "-m", "lejepa_tune", "report", sweep_uri, "--output-dir", str(tmp_path / "report")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and f"choice: {trial.trial_id}" in report.stdout, report.stderr[-2000:]
    export = subprocess.run([sys.executable, "-m", "lejepa_tune", "select", sweep_uri, "--export", str(tmp_path / "chosen")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads((tmp_path / "chosen" / "selection.json").read_text())["checkpoint"] == trial.checkpoint
    assert (tmp_path / "chosen" / "model.safetensors").is_file()
