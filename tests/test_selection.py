"""Tests for lejepa_tune.selection: which criteria are valid for what a sweep varies, the
label-free choice, and every criterion judged against the reference on hand-made records."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lejepa_tune.metrics import OBJECTIVE, OBJECTIVE_RESAMPLES, REFERENCE_ACC, REFERENCE_CORRECT, pack_bits, pack_floats
from lejepa_tune.records import SweepRecords, TrialRecord
from lejepa_tune.selection import (
    CRITERIA,
    NEAR_TIE_LEVEL,
    choose,
    criterion_validity,
    default_criterion,
    evaluate_criteria,
    near_tie_note,
    near_ties,
    reliability_warnings,
)


def test_every_criterion_reads_a_label_free_metric():
    from lejepa_tune.metrics import reads_labels

    assert "objective" in CRITERIA and CRITERIA["objective"].key == OBJECTIVE
    assert not any(reads_labels(c.key) for c in CRITERIA.values())


@pytest.mark.parametrize(
    "searched, valid, invalid",
    [
        (["loss.lam", "optim.lr", "optim.weight_decay", "train.epochs"], ["objective", "scaled_loss", "backbone/gmi"], ["loss"]),
        (["train.batch_size"], ["objective", "backbone/gmi", "embed/gmi"], ["loss", "scaled_loss"]),
        (["views.n_global", "views.n_local"], ["objective", "backbone/view_nn"], ["loss", "scaled_loss"]),
        (["model.proj_dim"], ["objective", "backbone/gmi", "embed/inv_ratio", "loss", "scaled_loss"], ["embed/gmi", "embed/rankme"]),
        (["model.backbone_kwargs.embed_dim"], ["backbone/inv_ratio", "loss"], ["objective", "backbone/gmi"]),
        (["labelfree.num_images"], ["loss"], ["objective", "backbone/view_nn"]),
        # α changes only the λ-corrected loss; the resamples and how the data loads change nothing
        (["labelfree.alpha"], ["objective", "loss", "backbone/gmi"], ["scaled_loss"]),
        (["labelfree.resamples", "data.num_workers", "data.in_memory"], list(CRITERIA), []),
        (["data.max_train_samples"], ["loss"], ["objective", "embed/gmi"]),
    ],
)
def test_validity_follows_what_the_sweep_varies(searched, valid, invalid):
    validity = criterion_validity(searched)
    assert all(validity[c].valid for c in valid), {c: validity[c] for c in valid}
    for c in invalid:
        assert not validity[c].valid and searched[0] in validity[c].reason


def test_default_is_the_objective_unless_the_space_names_another():
    assert default_criterion({"search": {}})[0] == "objective"
    assert default_criterion({"selection": {"criterion": "auto"}})[0] == "objective"
    assert default_criterion({"selection": {"criterion": "scaled_loss"}}) == ("scaled_loss", "selection.criterion is set to 'scaled_loss'")
    with pytest.raises(ValueError, match="unknown selection criterion"):
        default_criterion({"selection": {"criterion": "eval/linear_acc"}})


def rec(tid, status="completed", params=None, correct=None, **metrics):
    details = {REFERENCE_CORRECT: pack_bits(correct)} if correct is not None else {}
    return TrialRecord(tid, status, params or {}, {k.replace("__", "/"): v for k, v in metrics.items()}, details)


def test_choose_takes_the_best_completed_finite_value_and_ignores_labels():
    trials = [
        rec("a", labelfree__objective=1.0, eval__linear_acc_cv=0.99),
        rec("b", labelfree__objective=3.0, eval__linear_acc_cv=0.10),
        rec("c", status="stopped", labelfree__objective=9.0),
        rec("d", status="error", labelfree__objective=math.nan),
        rec("e", labelfree__objective=math.nan, eval__linear_acc_cv=1.0),
        rec("f", labelfree__objective=3.0),  # ties the best: the first one wins
    ]
    assert choose(trials, "objective").trial_id == "b"
    assert choose(trials, "loss") is None  # no trial reported train/loss
    assert choose([rec("x", train__loss=0.5), rec("y", train__loss=0.2)], "loss").trial_id == "y"


def test_evaluate_criteria_judges_every_criterion_against_the_reference():
    rng = np.random.default_rng(0)
    accs = [0.70, 0.80, 0.90, 0.60]
    correct = [rng.random(1000) < a for a in accs]
    trials = [
        rec(f"t{i}", params={"loss.lam": lam}, correct=c, labelfree__objective=obj, train__loss=loss, train__scaled_loss=loss,
            eval__linear_acc_cv=float(c.mean()))
        for i, (lam, c, obj, loss) in enumerate(zip([0.01, 0.05, 0.2, 0.5], correct, [2.0, 3.0, 4.0, 1.0], [0.1, 0.2, 0.3, 0.4]))
    ] + [rec("t4", status="stopped", params={"loss.lam": 0.1}, labelfree__objective=99.0)]
    records = SweepRecords("s", {"search": {"loss.lam": {}}}, tuple(trials), "/tmp/s")
    report = evaluate_criteria(records, n_boot=200)
    assert report.default == "objective" and report.choice == "t2" == report.best_by_reference
    a = report.agreements["objective"]
    assert a.n == 4 and a.spearman == pytest.approx(1.0) and a.regret == 0.0
    loss = report.agreements["loss"]  # picks t0, the smallest λ
    assert report.picks["loss"] == "t0" and loss.regret == pytest.approx(correct[2].mean() - correct[0].mean())
    assert report.not_completed == {"t4": "stopped"}
    assert report.reference == REFERENCE_ACC
    # A completed trial without a reference accuracy that the objective picks: its regret is
    # unknown, not that of the best trial among the others.
    unjudged = rec("t5", params={"loss.lam": 0.02}, labelfree__objective=9.0)
    report = evaluate_criteria(SweepRecords("s", records.spec, (*trials, unjudged), "/tmp/s"), n_boot=50)
    assert report.picks["objective"] == "t5" and "t5" in report.agreements["objective"].excluded
    assert math.isnan(report.agreements["objective"].regret)
    assert report.agreements["loss"].regret == pytest.approx(loss.regret)  # a pick with an accuracy keeps its regret
    assert 0.9 < report.noise_ceiling <= 1.0  # trials 10 points apart on 1,000 images
    assert not report.validity["loss"].valid and report.validity["scaled_loss"].valid


def test_reliability_warnings_only_for_the_objective_and_known_weak_spots(monkeypatch):
    import lejepa_tune.selection as selection

    monkeypatch.setattr(selection, "UNRELIABLE", ((("views.",), "rho 0.3 on the study's view sweeps"),))
    assert reliability_warnings(["views.n_global", "loss.lam"], "objective") == [
        "the label-free choice over views.n_global is not reliable: rho 0.3 on the study's view sweeps"
    ]
    assert reliability_warnings(["loss.lam"], "objective") == []
    assert reliability_warnings(["views.n_global"], "loss") == []


def with_resamples(trial, values):
    return dataclasses.replace(trial, details={**trial.details, OBJECTIVE_RESAMPLES: pack_floats(values)})


def test_near_ties_are_the_trials_the_choice_does_not_beat_on_enough_paired_resamples():
    rng = np.random.default_rng(0)
    base = rng.normal(20.0, 0.5, 200)  # the choice's objective on 200 resamples of the images
    close = base - 0.1 + rng.normal(0, 0.2, 200)  # a little lower, but not on every resample
    far = base - 2.0  # lower on every resample
    def trial(tid, objective, lam, values=None):
        made = rec(tid, params={"loss.lam": lam}, labelfree__objective=objective)
        return made if values is None else with_resamples(made, values)

    trials = [trial("pick", 20.0, 0.02, base), trial("close", 19.9, 0.03, close), trial("far", 18.0, 0.3, far), trial("none", 19.95, 0.04),
              trial("other_n", 19.99, 0.05, base[:100] - 0.01), trial("collapsed", math.nan, 0.9, np.full(200, math.nan)),
              trial("same_encoder", 20.0, 0.021, base),  # equal on every resample: one encoder (a repeat on a CPU)
              trial("again", 19.98, 0.02, base - 0.02 + rng.normal(0, 0.2, 200))]  # the choice's values, tried again on a GPU
    ties = near_ties(trials, "pick")
    share = float(np.mean(base > close))
    # "none", "other_n" and "collapsed" cannot be paired with the choice; "same_encoder" and "again" are repeats of it.
    assert 0.5 < share < NEAR_TIE_LEVEL and ties == {"close": pytest.approx(share)}
    assert near_ties(trials, "pick", level=share) == {}  # the level is strict: beating on that share is enough
    assert near_ties([trial("pick", 20.0, 0.02), *trials[1:]], "pick") == {}  # a choice without resamples
    # Only for the objective, and where it compares the trials (not across label-free sets).
    assert near_ties(trials, "pick", "scaled_loss") == {} and near_ties(trials, "pick", searched=["labelfree.num_images"]) == {}
    assert near_ties(trials, "pick", "objective", ["loss.lam"]) == {"close": pytest.approx(share)}
    # In a sweep's evaluation: for the objective only, and where it compares the trials.
    records = SweepRecords("s", {"search": {"loss.lam": {}}}, tuple(trials), "/tmp/s")
    assert evaluate_criteria(records, n_boot=20).near_ties == {"close": pytest.approx(share)}
    across_sets = SweepRecords("s", {"search": {"labelfree.num_images": {}}}, tuple(trials), "/tmp/s")
    assert evaluate_criteria(across_sets, n_boot=20).near_ties == {}
    by_loss = SweepRecords("s", {"search": {"loss.lam": {}}, "selection": {"criterion": "scaled_loss"}},
                           tuple(dataclasses.replace(t, metrics={**t.metrics, "train/scaled_loss": 1.0}) for t in trials), "/tmp/s")
    assert evaluate_criteria(by_loss, n_boot=20).near_ties == {}


def test_the_near_tie_note_names_the_closest_few_with_their_gaps_even_from_a_zero_objective():
    note = near_tie_note("a", "objective", {"a": 20.0, "b": 19.0, "c": 19.8, "d": 18.0, "e": 17.0},
                         {"b": 0.8, "c": 0.6, "d": 0.9, "e": 0.93}, shown=2)
    assert note == ("the choice is a near-tie: on resamples of the label-free images its objective is not reliably above that of trials "
                    "c (1.0% lower, the choice higher on 60% of the resamples), b (5.0% lower, the choice higher on 80% of the resamples) "
                    "and 2 more; where a few labels can be had, compare them with a probe")
    assert "b (0.5 lower, the choice higher on 70% of the resamples)" in near_tie_note("a", "objective", {"a": 0.0, "b": -0.5}, {"b": 0.7})
