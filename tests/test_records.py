"""Tests for lejepa_tune.records: the one file format every stage after the sweep reads."""

from __future__ import annotations

import math

import pytest

from lejepa_tune.records import SweepRecords, TrialRecord, join_uri, read_records, trial_label, write_records
from tiny import synthetic_records


def test_records_round_trip_exactly_through_json(tmp_path):
    records = synthetic_records()
    records = SweepRecords(**{**records.__dict__, "sweep_dir": str(tmp_path), "elapsed_s": math.nan})
    where = write_records(records)
    assert where == str(tmp_path / "records.json")
    back = read_records(str(tmp_path))
    assert back.trials == records.trials and back.spec == records.spec and math.isnan(back.elapsed_s)
    assert back.trials[0].params["loss.lam"] == records.trials[0].params["loss.lam"]  # exact floats
    assert back.trials[0].reference_correct is not None


def test_records_read_and_write_through_a_file_uri(tmp_path):
    records = SweepRecords("s", {"search": {}}, (TrialRecord("a", "completed", {}, {"train/loss": 1.0}),), f"file://{tmp_path}/sweep")
    write_records(records)
    assert (tmp_path / "sweep" / "records.json").is_file()
    assert read_records(f"file://{tmp_path}/sweep").trials == records.trials
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(f"file://{tmp_path}/elsewhere")


def test_uris_join_like_paths():
    assert join_uri("s3://bucket/sweeps", "a", "b") == "s3://bucket/sweeps/a/b"
    assert join_uri("/data/sweeps", "a") == "/data/sweeps/a"


def test_a_record_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="status"):
        TrialRecord("a", "finished", {}, {})


def test_trial_labels_name_a_run_by_its_searched_values():
    assert trial_label({"loss.lam": 0.005123, "optim.lr": 0.002, "train.batch_size": 64}) == "lam=0.0051 lr=0.002 batch_size=64"
    assert trial_label({"optim.lr": 0.0002}) == "lr=2.0e-4"


def test_a_password_in_the_tracking_uri_is_never_written():
    from lejepa_tune.records import mask_uri
    from lejepa_tune.search_space import spec_to_dict, sweep_spec_from_dict

    uri = "postgresql://bob:hunter2@db.example:5432/mlflow"
    assert mask_uri(uri) == "postgresql://bob:***@db.example:5432/mlflow"
    assert mask_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    spec = sweep_spec_from_dict({"name": "s", "tracking": {"tracking_uri": uri}})
    records = SweepRecords("s", spec_to_dict(spec), (), "/tmp/s", tracking_uri=uri)
    assert "hunter2" not in records.to_json() and "hunter2" not in str(spec_to_dict(spec))


def test_a_sweeps_summary_counts_its_trials_by_status_and_the_epochs_a_scheduler_saved():
    def sweep(*trials: tuple[str, int, dict]) -> SweepRecords:
        return SweepRecords("s", {"base": {"train": {"epochs": 8}}}, tuple(TrialRecord(f"t{i}", s, p, {}, epochs=e) for i, (s, e, p) in enumerate(trials)), "/x")

    assert sweep(("completed", 8, {}), ("completed", 8, {})).summary() == "2 trials (2 completed)"
    assert sweep(("completed", 8, {})).summary() == "1 trial (1 completed)"
    asha = sweep(("stopped", 1, {}), ("completed", 8, {}), ("stopped", 3, {}), ("error", 0, {}))
    assert asha.summary() == "4 trials (1 completed, 2 stopped, 1 error; 12 of their 32 epochs trained, 38%)"
    # trials whose epochs are searched: each against its own
    searched = sweep(("completed", 4, {"train.epochs": 4}), ("interrupted", 2, {"train.epochs": 16}))
    assert searched.summary() == "2 trials (1 completed, 1 interrupted; 6 of their 20 epochs trained, 30%)"
    assert SweepRecords("s", {}, (), "/x").summary() == "0 trials"


def test_a_sweeps_searched_keys_follow_its_space_and_are_not_written_as_a_field(tmp_path):
    spec = {"search": {"train.lr": {"type": "loguniform"}, "loss.lam": {"type": "uniform"}}}
    records = SweepRecords("s", spec, (), str(tmp_path))
    assert records.searched == ["train.lr", "loss.lam"]
    assert SweepRecords("s", {}, (), "/x").searched == []
    write_records(records)
    assert read_records(str(tmp_path)).searched == ["train.lr", "loss.lam"]
    assert '"searched"' not in (tmp_path / "records.json").read_text()
