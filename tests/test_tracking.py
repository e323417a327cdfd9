"""The MLflow side of a sweep, against a real MLflow backend (SQLite files): where the default
database lives, what happens to credentials in a tracking URL, how values are shown, and the
parent and child runs a sweep tracker writes and finds again."""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from lejepa_tune.metrics import EPOCH, LOSS, OBJECTIVE
from lejepa_tune.tracking import ROLE_TAG, MLflowTrialCallback, SweepTracker, numeric_metrics, open_client, resolve_tracking_uri
from lejepa_tune.trial import checkpointed_metrics
from tiny import write_checkpoint


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


def test_a_tracker_finds_its_parent_run_again_and_does_not_duplicate_it(tmp_path, mlflow_uri):
    uri = mlflow_uri
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


def _resolve(trial_id, config):
    return dict(config), dict(config)


def _checkpointed(root, trial_id):
    return checkpointed_metrics(str(root / trial_id))


def test_an_epoch_saved_but_not_logged_when_the_driver_died_is_logged_when_its_trial_resumes(tmp_path, mlflow_uri):
    """The driver logged epoch 1 of a trial, which then saved epoch 2 and reported it, and the
    driver died before the report reached it. The resumed sweep's callback (restored the way
    Tune restores it, pickled) logs epoch 2 from the checkpoint when the trial starts again,
    which goes on from that checkpoint and reports the epochs after it: every epoch once."""
    uri = mlflow_uri
    trial = Trial("trial_driver", config={"loss.lam": 0.1}, trial_id="t1", stub=True)

    first = MLflowTrialCallback(SweepTracker(uri, "exp", "s", str(tmp_path)), _resolve, functools.partial(_checkpointed, tmp_path / "train"))
    first.on_trial_start(0, [], trial)  # no checkpoint yet: nothing logged
    write_checkpoint(tmp_path / "train" / "t1", 0, 1)
    first.on_trial_result(1, [], trial, {EPOCH: 1, LOSS: 1.0})
    write_checkpoint(tmp_path / "train" / "t1", 1, 2)  # ... and the driver dies before this epoch's report reaches the callback

    resumed = pickle.loads(pickle.dumps(first))
    resumed.on_trial_start(2, [], trial)  # the trial goes on from epoch 2's checkpoint
    resumed.on_trial_result(3, [], trial, {EPOCH: 3, LOSS: 1 / 3})
    resumed.on_trial_start(4, [], trial)  # started again: its checkpoint's epoch was logged already
    resumed.on_trial_result(5, [], trial, {EPOCH: 3, LOSS: 1 / 3})  # and so was the epoch it reports again

    client = MlflowClient(uri)
    history = client.get_metric_history(resumed.run_ids["t1"], LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]


def test_the_trials_an_interruption_stopped_are_told_from_those_that_ended(tmp_path, mlflow_uri):
    """Tune stops a running trial without a word to its callbacks when the sweep is interrupted:
    its run is marked KILLED, and the tracker finds it as one the interruption stopped; a trial
    that completed, one a scheduler stopped (Tune calls ``on_trial_complete`` for it) and one
    that failed are not."""
    uri = mlflow_uri
    tracker = SweepTracker(uri, "exp", "s", str(tmp_path))
    callback = MLflowTrialCallback(tracker, _resolve)
    trials = {name: Trial("trial_driver", config={"loss.lam": 0.1}, trial_id=name, stub=True) for name in ("done", "stopped", "failed", "running")}
    for i, trial in enumerate(trials.values()):
        callback.on_trial_start(i, [], trial)
        callback.on_trial_result(i, [], trial, {EPOCH: 1, LOSS: 1.0})
    callback.on_trial_complete(4, [], trials["done"])
    callback.on_trial_complete(5, [], trials["stopped"])
    callback.on_trial_error(6, [], trials["failed"])
    callback.on_experiment_end(list(trials.values()))
    assert set(tracker.trial_runs("KILLED")) == {"running"}
    assert MlflowClient(uri).get_run(tracker.trial_runs()["running"]).info.status == "KILLED"


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
    # Under one lock file, beside the database: none per database left in the temporary directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mlflow.db.lock", "mlflow.db"]


def test_the_lock_of_a_database_in_a_directory_that_cannot_be_written_goes_to_the_temp_directory(tmp_path, monkeypatch):
    from lejepa_tune.tracking import _lock_path

    assert _lock_path(tmp_path / "mlflow.db") == str(tmp_path / ".mlflow.db.lock")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only directory (root can write to any)
    elsewhere = _lock_path(tmp_path / "mlflow.db")
    assert os.path.dirname(elsewhere) == tempfile.gettempdir() and os.path.basename(elsewhere).startswith("lejepa_tune_mlflow_")
    assert _lock_path(tmp_path / "other.db") != elsewhere


def test_a_checkpoint_cut_short_when_the_driver_died_is_passed_over_for_the_one_before(tmp_path):
    """A checkpoint still being written when the driver died: without its metrics, or with them
    cut short. The trial's last checkpoint is then the one before it."""
    run = tmp_path / "train" / "t1"
    write_checkpoint(run, 0, 1)
    write_checkpoint(run, 1, None)  # no metrics.json yet
    cut = Path(write_checkpoint(run, 2, 3))
    (cut / "metrics.json").write_text('{"epoch": 3, "train/lo')
    found = checkpointed_metrics(str(run))
    assert found[EPOCH] == 1 and found["checkpoint_path"].endswith("checkpoint_000000")


@pytest.mark.parametrize("damage", ["encoder.pt in part", "state.pt missing"])
def test_a_checkpoint_whose_model_files_were_copied_in_part_is_passed_over_for_the_one_before(tmp_path, damage):
    """Ray copies a checkpoint's files side by side, so a copy cut short when its driver or node
    died can hold the small metrics.json whole and a model file in part, or not yet at all. The
    sizes that save_checkpoint keeps in metrics.json tell such a copy; what reads the metrics
    (the sweep, a resumed run) does not see them."""
    import torch

    from lejepa_tune.metrics import CHECKPOINT_FILES
    from lejepa_tune.models import build_model
    from lejepa_tune.train import load_checkpoint, save_checkpoint
    from tiny import tiny_config

    cfg = tiny_config(tmp_path)
    model = build_model(cfg.model, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = tmp_path / "train" / "t1"
    for epoch in (1, 2):
        save_checkpoint(run / f"checkpoint_00000{epoch}", model, opt, cfg, epoch, 10 * epoch, {EPOCH: epoch, LOSS: 1.0 / epoch})
    found = checkpointed_metrics(str(run))
    assert found == {EPOCH: 2, LOSS: 0.5, "checkpoint_path": str(run / "checkpoint_000002")}
    assert load_checkpoint(run / "checkpoint_000002", model, opt, cfg)[2] == {EPOCH: 2, LOSS: 0.5}
    name, _, how = damage.partition(" ")
    path = run / "checkpoint_000002" / name
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    found = checkpointed_metrics(str(run))
    assert found[EPOCH] == 1 and found["checkpoint_path"].endswith("checkpoint_000001") and CHECKPOINT_FILES not in found
