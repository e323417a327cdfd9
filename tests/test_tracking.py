"""The MLflow side of a sweep, against a real MLflow backend (SQLite files): where the default
database lives, what happens to credentials in a tracking URL, how values are shown, and the
parent and child runs a sweep tracker writes and finds again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from lejepa_tune.metrics import OBJECTIVE
from lejepa_tune.tracking import ROLE_TAG, SweepTracker, numeric_metrics, open_client, resolve_tracking_uri


def test_the_default_database_is_an_absolute_path_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_credentials_in_a_tracking_url_move_to_mlflows_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert resolve_tracking_uri("http://bob:s%40cret@mlflow.example:5000/") == "http://mlflow.example:5000/"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "s@cret")


def test_only_namespaced_numbers_are_metrics():
    result = {"train/loss": 0.5, OBJECTIVE: 3, "training_iteration": 4, "checkpoint_dir_name": "x", "eval/flag": True, "eval/note": "a"}
    assert numeric_metrics(result) == {"train/loss": 0.5, OBJECTIVE: 3.0}


def test_a_tracker_finds_its_parent_run_again_and_does_not_duplicate_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SweepTracker(uri, "exp", "sweep_a", str(tmp_path / "sweep_a"))
    first.log_sweep_params({"tune": {"num_samples": 4, "lr": 0.0012345678}})
    assert SweepTracker.find_parent(uri, "exp", str(tmp_path / "sweep_a")) == first.parent_run_id
    assert SweepTracker.find_parent(uri, "exp", str(tmp_path / "other")) is None
    again = SweepTracker(uri, "exp", "sweep_a", str(tmp_path / "sweep_a"), parent_run_id=first.parent_run_id)
    again.finish("FINISHED")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [r.data.tags[ROLE_TAG] for r in runs] == ["sweep"] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["tune.lr"] == "0.001235"  # shown rounded; exact values live in tags
    # MLflow 3 opens the experiment in its model-training view, not the GenAI one.
    assert client.get_experiment_by_name("exp").tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_clients_opened_together_on_a_new_sqlite_file_all_succeed(tmp_path):
    """The first client on a new SQLite file creates MLflow's tables; three processes doing so at
    once (sweeps started together in one directory) must not break each other's migrations."""
    code = "import sys; from lejepa_tune.tracking import open_client; open_client(sys.argv[1]).search_experiments()"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, "\n".join(e[-1000:] for e in errors)
    assert MlflowClient(uri).get_experiment_by_name("Default") is not None
