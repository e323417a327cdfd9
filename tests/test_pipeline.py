"""The stages after a sweep: the analysis and the report of its records, what MLflow shows of
them (on a real SQLite tracking store), and the records read back from a directory or through
MLflow alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from mlflow import MlflowClient
from tiny import new_tracking_db, tracked_records, with_near_tie

from lejepa_tune.config import ConfigError
from lejepa_tune.pipeline import CHOICE_TAG, CHOSEN_TAG, CRITERION_TAG, NEAR_TIE_TAG, NOTE_TAG, analyse_and_report, describe, load_records, publish
from lejepa_tune.records import RECORDS_FILE, trial_label, write_records


@pytest.fixture(scope="module")
def published(tmp_path_factory, mlflow_template):
    """A tracked synthetic sweep whose choice has a near-tie, analysed, reported and published."""
    root = tmp_path_factory.mktemp("pipeline")
    uri = new_tracking_db(mlflow_template, root)
    _, records = tracked_records(uri, 8, "pipe", str(root / "sweep"))
    records = with_near_tie(records)
    analysis, files = analyse_and_report(records, root / "report")
    publish(analysis, records, files["html"].parent)
    return records, analysis, MlflowClient(uri)


def test_the_sweep_run_carries_the_choice_and_only_the_chosen_trial_is_marked(published):
    records, analysis, client = published
    parent = client.get_run(records.parent_run_id)
    assert parent.data.tags[CHOICE_TAG] == analysis.choice
    assert parent.data.tags[CRITERION_TAG] == analysis.selection.default
    assert parent.data.tags[NOTE_TAG] == describe(analysis)
    assert parent.data.metrics["selection/objective/regret"] == round(analysis.selection.agreements["objective"].regret, 4)
    marked = [t.trial_id for t in records.trials if client.get_run(t.run_id).data.tags.get(CHOSEN_TAG) == "true"]
    assert marked == [analysis.choice]
    # The near-tie's run says so, with the share of the resamples on which the choice is higher.
    (tie, share), = analysis.selection.near_ties.items()
    tagged = {t.trial_id: client.get_run(t.run_id).data.tags.get(NEAR_TIE_TAG) for t in records.trials if t.run_id}
    assert {k: v for k, v in tagged.items() if v is not None} == {tie: f"{share:.2f}"}
    assert "**Warning:** the choice is a near-tie" in parent.data.tags[NOTE_TAG]
    artifacts = {a.path for a in client.list_artifacts(records.parent_run_id)}
    assert {RECORDS_FILE, "selection"} <= artifacts
    shown = {a.path for a in client.list_artifacts(records.parent_run_id, "selection")}
    assert {"selection/criteria.json", "selection/report.html"} <= shown


def test_the_description_names_the_pick_and_how_it_agrees_with_the_labels(published):
    records, analysis, _ = published
    text = describe(analysis)
    chosen = next(t for t in records.trials if t.trial_id == analysis.choice)
    agreement = analysis.selection.agreements[analysis.selection.default]
    assert f"**Chosen without labels:** trial `{analysis.choice}` ({trial_label(chosen.params)})." in text
    assert f"regret {100 * agreement.regret:.1f} points" in text
    assert f"{len(records.trials)} trials (8 completed, 1 stopped, 1 error) over `loss.lam` loguniform [0.005, 0.5], `optim.lr` loguniform" in text
    assert "searched by Optuna's TPE on `labelfree/objective`." in text  # the spec names no searcher or scheduler: the defaults
    spec = {**records.spec, "tune": {"searcher": "random", "scheduler": "asha", "metric": "labelfree/objective"}}
    assert "searched by Optuna's random sampler on `labelfree/objective`, trials stopped early by ASHA." in describe(replace(analysis, records=replace(records, spec=spec)))


def test_records_come_back_through_mlflow_alone_or_from_the_sweep_directory(published, tmp_path):
    records, _, client = published
    assert load_records("pipe", records.tracking_uri) == records
    write_records(replace(records, sweep_dir=str(tmp_path)))
    assert load_records(str(tmp_path)).trials == records.trials
    assert load_records(str(tmp_path / RECORDS_FILE)).name == "pipe"


def test_records_that_are_nowhere_are_one_line_errors(published, tmp_path):
    records, _, _ = published
    with pytest.raises(ConfigError, match=r"no_such_sweep: neither a sweep directory nor an MLflow experiment at sqlite:///"):
        load_records("no_such_sweep", records.tracking_uri)
    with pytest.raises(ConfigError, match=rf"{tmp_path}: not a finished sweep directory \(no records\.json\)"):
        load_records(str(tmp_path))


def test_a_sweep_with_no_completed_trial_is_published_without_an_analysis(tmp_path, mlflow_uri):
    uri = mlflow_uri
    _, records = tracked_records(uri, 2, "failed", str(tmp_path / "sweep"))
    records = replace(records, trials=tuple(t for t in records.trials if t.status != "completed"))
    assert analyse_and_report(records) == (None, {})
    publish(None, records, None)
    client = MlflowClient(uri)
    assert client.get_run(records.parent_run_id).data.tags[CHOICE_TAG] == "none: no trial completed"
    path = client.download_artifacts(records.parent_run_id, RECORDS_FILE, str(tmp_path))
    assert [t["trial_id"] for t in json.loads(open(path).read())["trials"]] == ["stop", "fail"]

