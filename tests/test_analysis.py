"""Tests for lejepa_tune.analysis: the choice, its warnings, and the few numbers MLflow shows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lejepa_tune.analysis import agreement_rows, analyse, headline_metrics
from lejepa_tune.metrics import OBJECTIVE, unpack_floats
from tiny import synthetic_records, with_near_tie


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


def test_a_near_tie_at_the_top_is_warned_about_with_the_trials_how_far_behind_and_how_often_beaten():
    records = synthetic_records()
    tied = with_near_tie(records)
    a = analyse(tied, n_boot=20)
    values = {t.trial_id: t.metrics[OBJECTIVE] for t in tied.trials if t.status == "completed"}
    runner_up = sorted(values, key=values.get)[-2]
    resamples = {t.trial_id: unpack_floats(t.objective_resamples) for t in tied.trials if t.objective_resamples}
    share = float(np.mean(resamples[a.choice] > resamples[runner_up]))
    gap = (values[a.choice] - values[runner_up]) / values[a.choice]
    assert a.selection.near_ties == {runner_up: pytest.approx(share)}
    assert a.warnings == (f"the choice is a near-tie: on resamples of the label-free images its objective is not reliably above that of "
                          f"trial {runner_up} ({gap:.1%} lower, the choice higher on {share:.0%} of the resamples); where a few labels can be "
                          f"had, compare the two with a probe",)
    assert analyse(records, n_boot=20).warnings == ()  # no resamples, no word
