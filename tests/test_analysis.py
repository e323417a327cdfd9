"""Tests for lejepa_tune.analysis: the choice, its warnings, and the few numbers MLflow shows."""

from __future__ import annotations

import dataclasses

from lejepa_tune.analysis import agreement_rows, analyse, headline_metrics
from tiny import synthetic_records


def test_analysis_chooses_by_the_objective_among_completed_trials():
    a = analyse(synthetic_records(), n_boot=100)
    assert a.choice == a.selection.picks["objective"] and a.choice not in ("stop", "fail")
    assert a.selection.not_completed == {"stop": "stopped", "fail": "error"}
    assert a.warnings == ()
    rows = agreement_rows(a.selection)
    assert rows[0]["criterion"] == "objective" and rows[0]["n"] == 8


def test_an_invalid_default_criterion_is_warned_about():
    records = synthetic_records()
    records = dataclasses.replace(records, spec={**records.spec, "selection": {"criterion": "loss"}})
    a = analyse(records, n_boot=50)
    assert a.selection.default == "loss"
    assert a.warnings[0].startswith("the choice uses loss, which is not valid for this sweep: the sweep searches loss.lam")


def test_headline_metrics_are_few_rounded_and_finite():
    metrics = headline_metrics(analyse(synthetic_records(), n_boot=50).selection)
    assert set(metrics) >= {"selection/objective/spearman", "selection/objective/kendall", "selection/objective/regret", "selection/noise_ceiling"}
    assert len(metrics) <= 10
    assert all(round(v, 4) == v for v in metrics.values())
