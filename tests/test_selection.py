"""Tests for lejepa_tune.selection: rank statistics, agreement and the label-free criteria on
hand-made trial tables."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.selection import (
    CRITERIA,
    Agreement,
    SelectionReport,
    agreement,
    bootstrap_ci,
    choose,
    criterion_validity,
    default_criterion,
    evaluate_criteria,
    kendall,
    merge_metrics,
    regret,
    selection_metrics,
    spearman,
    top_k_overlap,
    trial_lam,
)
from lejepa_tune.sweep import TrialRecord

# A sweep where a lower loss always means a higher accuracy: a perfect "min" criterion.
LOSS = [0.9, 0.7, 0.5, 0.4, 0.2]
ACC = [0.50, 0.60, 0.70, 0.75, 0.90]
IDS = ["t0", "t1", "t2", "t3", "t4"]

# A case with ties on both sides, worked by hand:
#   pairs (i < j): 7 concordant, 1 discordant, 1 tied only in x (1, 2), 1 tied only in y (2, 3)
#   tau-b = (7 - 1) / sqrt((10 - 1) * (10 - 1)) = 2 / 3
#   mid-ranks x = [1, 2.5, 2.5, 4, 5], y = [1, 4, 2.5, 2.5, 5]; Pearson of the ranks = 7.25 / 9.5
TIES_X = [1.0, 2.0, 2.0, 3.0, 4.0]
TIES_Y = [1.0, 3.0, 2.0, 2.0, 5.0]


def tau_b_by_pairs(x, y):
    """Kendall's tau-b straight from its definition, counting pairs."""
    conc = disc = tie_x = tie_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
        if dx == 0 and dy == 0:
            tie_x += 1
            tie_y += 1
        elif dx == 0:
            tie_x += 1
        elif dy == 0:
            tie_y += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    n0 = len(x) * (len(x) - 1) // 2
    return (conc - disc) / math.sqrt((n0 - tie_x) * (n0 - tie_y))


def spearman_by_midranks(x, y):
    """Spearman's rho as the Pearson correlation of mid-ranks, ranks computed by hand."""

    def midranks(v):
        v = np.asarray(v, dtype=float)
        return np.array([(v < a).sum() + ((v == a).sum() + 1) / 2 for a in v])

    rx, ry = midranks(x), midranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


# --------------------------------------------------------------------------- correlations


def test_monotone_and_reversed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # Rank statistics: any monotone transform of one side changes nothing.
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)


def test_ties_match_hand_computation():
    assert kendall(TIES_X, TIES_Y) == pytest.approx(2 / 3)
    assert spearman(TIES_X, TIES_Y) == pytest.approx(7.25 / 9.5)
    # ... and the independent pair-counting / mid-rank formulas agree.
    assert tau_b_by_pairs(TIES_X, TIES_Y) == pytest.approx(2 / 3)
    assert spearman_by_midranks(TIES_X, TIES_Y) == pytest.approx(7.25 / 9.5)


def test_random_tables_match_independent_formulas():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert kendall(x, y) == pytest.approx(tau_b_by_pairs(x, y))
        assert spearman(x, y) == pytest.approx(spearman_by_midranks(x, y))


@pytest.mark.parametrize(
    "x, y",
    [
        ([1.0, 2.0], [3.0, 4.0]),  # fewer than 3 points
        ([], []),
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]),  # constant x
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]),  # constant y
    ],
)
def test_undefined_correlations_are_nan_without_warnings(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning leaking out fails the test
        assert math.isnan(spearman(x, y))
        assert math.isnan(kendall(x, y))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = np.arange(20.0)
    y = x + rng.normal(0.0, 4.0, 20)  # noisy but clearly increasing
    rho = spearman(x, y)
    lo, hi = bootstrap_ci(x, y, spearman, n_boot=500, seed=3)
    assert -1.0 <= lo < rho < hi <= 1.0
    assert bootstrap_ci(x, y, spearman, n_boot=500, seed=3) == (lo, hi)
    assert bootstrap_ci(x, y, spearman, n_boot=500, seed=4) != (lo, hi)
    # A narrower level gives a narrower interval inside the wider one.
    lo50, hi50 = bootstrap_ci(x, y, spearman, n_boot=500, level=0.5, seed=3)
    assert lo <= lo50 <= hi50 <= hi


def test_bootstrap_ci_skips_nan_resamples_and_handles_tiny_input():
    # With 3 points many resamples repeat one point (constant -> nan); they are skipped and a
    # perfectly monotone table gives an interval of exactly [1, 1].
    ci = bootstrap_ci([1, 2, 3], [4, 5, 6], spearman, n_boot=200)
    assert ci == pytest.approx((1.0, 1.0))
    lo, hi = bootstrap_ci([1, 2], [3, 4], spearman)
    assert math.isnan(lo) and math.isnan(hi)
    lo, hi = bootstrap_ci([1, 2, 3], [4, 5, 6], lambda x, y: math.nan)
    assert math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------- regret, top-k


def test_regret_zero_when_criterion_picks_best():
    assert regret(LOSS, ACC, mode="min") == 0.0
    assert regret([-v for v in LOSS], ACC, mode="max") == 0.0


def test_regret_known_positive_value():
    # min picks trial 1 (0.3) with accuracy 0.7; the best accuracy is 0.9.
    assert regret([0.5, 0.3, 0.9, 0.4], [0.8, 0.7, 0.6, 0.9], mode="min") == pytest.approx(0.2)
    # max picks trial 2 (0.9) with accuracy 0.6.
    assert regret([0.5, 0.3, 0.9, 0.4], [0.8, 0.7, 0.6, 0.9], mode="max") == pytest.approx(0.3)


def test_regret_ties_pick_first_occurrence():
    assert regret([0.1, 0.1, 0.5], [0.6, 0.9, 0.7], mode="min") == pytest.approx(0.3)
    assert regret([0.1, 0.1, 0.5], [0.9, 0.6, 0.7], mode="min") == 0.0


def test_regret_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        regret([0.1, math.nan], [0.5, 0.6])
    with pytest.raises(ValueError, match="mode"):
        regret([0.1, 0.2], [0.5, 0.6], mode="lowest")


def test_top_k_overlap_known_values():
    loss = [1.0, 2.0, 3.0, 4.0, 5.0]  # top-3 by loss (min): trials {0, 1, 2}
    acc = [0.9, 0.1, 0.8, 0.7, 0.2]  # top-3 by accuracy: trials {0, 2, 3}
    assert top_k_overlap(loss, acc, k=3, mode="min") == pytest.approx(2 / 3)
    assert top_k_overlap(loss, acc, k=1, mode="min") == 1.0
    # mode "max": top-3 by criterion {4, 3, 2} meets {0, 2, 3} in {2, 3}.
    assert top_k_overlap(loss, acc, k=3, mode="max") == pytest.approx(2 / 3)
    assert top_k_overlap(loss, acc, k=2, mode="max") == 0.0
    assert top_k_overlap(LOSS, ACC, k=3, mode="min") == 1.0


def test_top_k_overlap_clamps_k():
    assert top_k_overlap([1.0, 2.0], [0.1, 0.2], k=3, mode="min") == 1.0  # k -> 2, all trials


# --------------------------------------------------------------------------- agreement


def test_agreement_perfect_min_criterion_is_positive():
    result = agreement("train/loss", IDS, LOSS, ACC, mode="min", n_boot=200)
    assert isinstance(result, Agreement)
    assert result.criterion == "train/loss" and result.n == 5 and result.excluded == ()
    assert result.spearman == pytest.approx(1.0)
    assert result.kendall == pytest.approx(1.0)
    assert result.regret == 0.0 and result.top3_overlap == 1.0
    assert result.spearman_ci == pytest.approx((1.0, 1.0))


def test_agreement_reversed_criterion_is_negative():
    # Lower loss going with *lower* accuracy: a misleading criterion.
    result = agreement("train/loss", IDS, LOSS[::-1], ACC, mode="min", n_boot=200)
    assert result.spearman == pytest.approx(-1.0)
    assert result.kendall == pytest.approx(-1.0)
    assert result.regret == pytest.approx(0.90 - 0.50)
    assert result.top3_overlap == pytest.approx(1 / 3)  # only the middle trial t2 is in both


def test_agreement_max_mode_is_not_negated():
    rank_like = [1.0, 2.0, 3.0, 4.0, 5.0]  # higher is better, matches ACC
    result = agreement("rankme", IDS, rank_like, ACC, mode="max", n_boot=50)
    assert result.spearman == pytest.approx(1.0) and result.regret == 0.0


def test_agreement_with_ties_uses_oriented_values():
    # mode "min" on -TIES_X is the same ordering as mode "max" on TIES_X.
    ids = list("abcde")
    result = agreement("c", ids, [-v for v in TIES_X], TIES_Y, mode="min", n_boot=50)
    assert result.kendall == pytest.approx(2 / 3)
    assert result.spearman == pytest.approx(7.25 / 9.5)


def test_agreement_excludes_diverged_trials():
    ids = ["a", "b", "c", "d", "e", "f"]
    loss = [0.9, math.nan, 0.5, math.inf, 0.2, 0.4]
    acc = [0.5, 0.95, 0.7, 0.99, 0.9, math.nan]
    result = agreement("train/loss", ids, loss, acc, mode="min", n_boot=100)
    assert result.excluded == ("b", "d", "f")
    assert result.n == 3
    # The kept trials (a, c, e) are perfectly ordered; the diverged ones' accuracies do not
    # count toward the best accuracy, so regret stays 0.
    assert result.spearman == pytest.approx(1.0) and result.regret == 0.0


def test_agreement_too_few_trials_gives_nan_correlations():
    result = agreement("train/loss", [1, 2, 3], [0.1, math.nan, 0.3], [0.5, 0.6, 0.4], n_boot=50)
    assert result.n == 2 and result.excluded == ("2",)
    assert math.isnan(result.spearman) and math.isnan(result.kendall)
    assert all(math.isnan(v) for v in result.spearman_ci)
    assert result.regret == pytest.approx(0.0)  # picks 0.1 -> accuracy 0.5, the best of {0.5, 0.4}


def test_agreement_is_deterministic_and_frozen():
    a = agreement("train/loss", IDS, [0.9, 0.5, 0.7, 0.4, 0.2], ACC, n_boot=200, seed=1)
    b = agreement("train/loss", IDS, [0.9, 0.5, 0.7, 0.4, 0.2], ACC, n_boot=200, seed=1)
    assert a == b
    with pytest.raises(AttributeError):
        a.n = 0  # type: ignore[misc]


def test_agreement_validates_ids_and_mode():
    with pytest.raises(ValueError, match="trial ids"):
        agreement("x", ["a"], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="mode"):
        agreement("x", IDS, LOSS, ACC, mode="lower")


# --------------------------------------------------------------------------- criteria

LAM_RANGE = {"type": "loguniform", "low": 0.005, "high": 0.5}


def spec_searching(*keys, **sections):
    """A sweep spec searching ``keys`` (each over a range valid for it)."""
    ranges = {
        "loss.lam": LAM_RANGE,
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "train.batch_size": {"type": "choice", "values": [32, 64]},
        "views.n_global": {"type": "choice", "values": [2, 4]},
        "views.global_scale": {"type": "choice", "values": [[0.3, 1.0], [0.08, 1.0]]},
        "model.proj_dim": {"type": "choice", "values": [16, 64]},
    }
    return sweep_spec_from_dict({"name": "s", "search": {k: ranges[k] for k in keys}, **sections})


def trial(tid, status="completed", lam=None, **metrics):
    params = {"loss.lam": lam} if lam is not None else {}
    return TrialRecord(tid, status, params, {k.replace("__", "/"): v for k, v in metrics.items()}, None)


# lam searched; t4 diverged (an error), t5 stopped early by the scheduler with the lowest loss.
TRIALS = [
    trial("t0", lam=0.01, train__loss=0.30, eval__rankme=20.0, eval__linear_acc=0.80),
    trial("t1", lam=0.05, train__loss=0.50, eval__rankme=25.0, eval__linear_acc=0.85),
    trial("t2", lam=0.20, train__loss=0.90, eval__rankme=30.0, eval__linear_acc=0.90),
    trial("t3", lam=0.10, train__loss=0.60, eval__rankme=math.nan, eval__linear_acc=0.70),
    trial("t4", status="error", lam=0.45, train__loss=math.nan),
    trial("t5", status="stopped", lam=0.02, train__loss=0.10),
]


def test_scaled_loss_is_loss_over_lam_to_the_alpha():
    spec = spec_searching("loss.lam", selection={"alpha": 0.5})
    scaled = CRITERIA["scaled_loss"]
    assert scaled.value(TRIALS[1], spec) == pytest.approx(0.50 / 0.05**0.5)
    assert scaled.value(TRIALS[2]) == pytest.approx(0.90 / 0.20**0.4)  # no spec: the paper's alpha
    # lam not searched: the base config's value.
    base = sweep_spec_from_dict({"name": "s", "base": {"loss": {"lam": 0.02}}})
    plain = trial("p", train__loss=0.4)
    assert trial_lam(plain, base) == 0.02
    assert scaled.value(plain, base) == pytest.approx(0.4 / 0.02**0.4)
    assert math.isnan(scaled.value(plain))  # lam unknown without a spec
    assert math.isnan(scaled.value(trial("z", lam=0.0, train__loss=0.4), spec))  # loss / 0


def test_criteria_read_their_metric_and_mode():
    t = trial("x", lam=0.1, train__loss=0.3, eval__rankme=12.0, eval__rankme_backbone=7.0, yardstick__loss=2.5, eval__linear_acc=0.9)
    assert {n: (c.mode, c.value(t)) for n, c in CRITERIA.items() if n != "scaled_loss"} == {
        "loss": ("min", 0.3),
        "rankme": ("max", 12.0),
        "rankme_backbone": ("max", 7.0),
        "yardstick": ("min", 2.5),
    }
    assert all(c.description for c in CRITERIA.values())
    assert math.isnan(CRITERIA["yardstick"].value(trial("y", train__loss=0.3)))  # not measured


@pytest.mark.parametrize(
    "keys, expected",
    [
        (("loss.lam",), "scaled_loss"),
        (("loss.lam", "optim.lr", "model.proj_dim"), "scaled_loss"),
        (("train.batch_size",), "yardstick"),
        (("loss.lam", "train.batch_size"), "yardstick"),
        (("views.n_global",), "yardstick"),
        (("views.global_scale", "optim.lr"), "yardstick"),
        (("optim.lr",), "loss"),
        ((), "loss"),
    ],
)
def test_default_criterion_follows_what_the_sweep_varies(keys, expected):
    name, reason = default_criterion(spec_searching(*keys))
    assert name == expected
    if expected == "yardstick":
        assert "batch size N" in reason and "views" in reason
        assert ", ".join(k for k in keys if k.startswith(("train.", "views."))) in reason
    if expected == "scaled_loss":
        assert "loss.lam" in reason and "α = 0.4" in reason


def test_validity_flags_raw_losses_when_batch_size_or_views_vary():
    for keys in (("train.batch_size",), ("views.n_global", "loss.lam")):
        v = criterion_validity(spec_searching(*keys))
        assert not v["loss"].valid and not v["scaled_loss"].valid
        assert v["rankme"].valid and v["yardstick"].valid
        assert keys[0] in v["loss"].reason
    v = criterion_validity(spec_searching("loss.lam", "model.proj_dim", "optim.lr"))
    assert all(valid for valid, _ in v.values())


def test_an_explicit_criterion_wins_but_is_flagged_when_invalid():
    assert default_criterion(spec_searching("loss.lam", selection={"criterion": "rankme"}))[0] == "rankme"
    name, reason = default_criterion(spec_searching("train.batch_size", selection={"criterion": "loss"}))
    assert name == "loss" and "not valid" in reason and "train.batch_size" in reason
    with pytest.raises(ValueError, match="unknown selection criterion 'acc'"):
        default_criterion(spec_searching(selection={"criterion": "acc"}))


def test_choose_ignores_unfinished_and_non_finite_trials():
    assert choose(TRIALS, "loss").trial_id == "t0"  # t5 has a lower loss but was stopped
    assert choose(TRIALS, "rankme").trial_id == "t2"  # t3's nan never wins a "max"
    spec = spec_searching("loss.lam")
    scaled = {t.trial_id: CRITERIA["scaled_loss"].value(t, spec) for t in TRIALS[:4]}
    assert choose(TRIALS, "scaled_loss", spec).trial_id == min(scaled, key=scaled.get) == "t3"
    assert choose(TRIALS, "yardstick") is None  # never measured
    assert choose([TRIALS[4], TRIALS[5]], "loss") is None
    # Ties: the first in input order.
    tied = [trial("a", train__loss=0.2), trial("b", train__loss=0.2)]
    assert choose(tied, "loss").trial_id == "a" and choose(tied[::-1], "loss").trial_id == "b"
    with pytest.raises(ValueError, match="unknown selection criterion"):
        choose(TRIALS, "eval/linear_acc")


def test_choose_never_looks_at_labels():
    shuffled = [
        TrialRecord(t.trial_id, t.status, t.params, {**t.metrics, "eval/linear_acc": acc, "eval/knn_acc": acc}, None)
        for t, acc in zip(TRIALS, [0.1, 0.99, 0.5, 0.3, 0.0, 0.2])
    ]
    for name in CRITERIA:
        before, after = choose(TRIALS, name), choose(shuffled, name)
        assert (before and before.trial_id) == (after and after.trial_id)


def test_evaluate_criteria_over_completed_trials():
    spec = spec_searching("loss.lam", "optim.lr")
    report = evaluate_criteria(TRIALS, spec, n_boot=100)
    assert isinstance(report, SelectionReport)
    assert report.criteria == tuple(CRITERIA) and report.sweep == "s"
    assert report.default == "scaled_loss" and "loss.lam" in report.reason
    # The diverged and the stopped trials are listed, never scored.
    assert dict(report.not_completed) == {"t4": "error", "t5": "stopped"}
    assert report.picks == {"loss": "t0", "scaled_loss": "t3", "rankme": "t2", "rankme_backbone": None, "yardstick": None}
    assert report.best_by_accuracy == "t2"
    assert report.lams["t3"] == 0.1 and report.alpha == 0.4
    # Values for every trial, nan where undefined.
    assert report.values["loss"]["t5"] == 0.10 and math.isnan(report.values["loss"]["t4"])

    loss = report.agreements["loss"]
    completed = TRIALS[:4]
    expected = agreement(
        "loss", [t.trial_id for t in completed], [t.metrics["train/loss"] for t in completed],
        [t.metrics["eval/linear_acc"] for t in completed], mode="min", n_boot=100,
    )
    assert loss == expected and loss.n == 4 and loss.excluded == ()
    assert loss.regret == pytest.approx(0.10)  # picks t0 (0.80) where t2 has 0.90
    rankme = report.agreements["rankme"]
    assert rankme.excluded == ("t3",) and rankme.n == 3
    assert rankme.spearman == pytest.approx(1.0) and rankme.regret == 0.0
    yard = report.agreements["yardstick"]
    assert yard.n == 0 and yard.excluded == ("t0", "t1", "t2", "t3") and math.isnan(yard.spearman)


def test_evaluate_criteria_with_the_yardstick_merged_in():
    spec = spec_searching("train.batch_size", "loss.lam")
    yard = {"t0": {"yardstick/loss": 3.0}, "t1": {"yardstick/loss": 2.0}, "t2": {"yardstick/loss": 1.0}, "t3": {"yardstick/loss": 4.0}}
    trials = merge_metrics(TRIALS, yard)
    assert trials[0].metrics["train/loss"] == 0.30 and trials[0].metrics["yardstick/loss"] == 3.0
    assert "yardstick/loss" not in trials[4].metrics
    report = evaluate_criteria(trials, spec, n_boot=100)
    assert report.default == "yardstick" and report.picks["yardstick"] == "t2"
    a = report.agreements["yardstick"]
    assert a.n == 4 and a.spearman == pytest.approx(1.0) and a.regret == 0.0
    assert not report.validity["loss"].valid and report.validity["yardstick"].valid
    with pytest.raises(ValueError, match="unique"):
        evaluate_criteria([TRIALS[0], TRIALS[0]], spec)


def test_selection_metrics_are_flat_and_finite():
    report = evaluate_criteria(TRIALS, spec_searching("loss.lam"), n_boot=100)
    metrics = selection_metrics(report)
    stats = ("spearman", "spearman_lo", "spearman_hi", "kendall", "regret", "top3_overlap", "n")
    for name in ("loss", "scaled_loss", "rankme"):
        assert {f"selection/{name}/{s}" for s in stats} <= metrics.keys()
    # The yardstick was not measured: only its n (0) is logged, no NaN reaches MLflow.
    assert {k for k in metrics if k.startswith("selection/yardstick/")} == {"selection/yardstick/n"}
    assert metrics["selection/yardstick/n"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["selection/loss/regret"] == pytest.approx(0.10)
    assert metrics["selection/rankme/n"] == 3.0
