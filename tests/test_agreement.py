"""Tests for lejepa_tune.agreement: rank statistics, bootstrap intervals, regret, top-k overlap,
within-group correlation and the noise ceiling, on hand-made tables."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from lejepa_tune.agreement import (
    Agreement,
    agreement,
    bootstrap_ci,
    kendall,
    noise_ceiling,
    regret,
    spearman,
    top_k_overlap,
    within_group_spearman,
)

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


@pytest.mark.parametrize("n", [3, 5, 12, 40])
def test_bootstrap_ci_of_spearman_ranks_all_resamples_at_once_to_the_same_interval(n):
    # The default statistic's resamples are ranked as one array; any other statistic's one at a
    # time. The two give the same interval, ties and undefined resamples included.
    rng = np.random.default_rng(n)
    x = np.round(rng.normal(size=n))  # many ties
    y = np.round(x + rng.normal(size=n), 1)
    one_at_a_time = bootstrap_ci(x, y, lambda a, b: spearman(a, b), n_boot=300, seed=n)
    assert bootstrap_ci(x, y, spearman, n_boot=300, seed=n) == pytest.approx(one_at_a_time, abs=1e-12)
    assert math.isfinite(one_at_a_time[0])


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


def test_agreement_validates_ids_and_mode():
    with pytest.raises(ValueError, match="trial ids"):
        agreement("x", ["a"], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="mode"):
        agreement("x", IDS, LOSS, ACC, mode="lower")




# --------------------------------------------------------------------------- within groups


def test_within_group_spearman_catches_a_criterion_that_only_tracks_the_group():
    # Two batch-size groups; the criterion is just the group (so ranks groups perfectly) and
    # ties inside each group: no information within groups.
    score = [1, 1, 1, 2, 2, 2]
    acc = [0.50, 0.60, 0.55, 0.80, 0.70, 0.75]
    groups = ["b32", "b32", "b32", "b64", "b64", "b64"]
    assert spearman(score, acc) > 0.8
    rho, n = within_group_spearman(score, acc, groups)
    assert math.isnan(rho) and n == 0  # constant inside every group: undefined, not 0
    # A criterion that also orders trials inside each group scores 1 there.
    rho, n = within_group_spearman([1, 3, 2, 6, 4, 5], acc, groups)
    assert rho == pytest.approx(1.0) and n == 6


def test_within_group_spearman_weights_by_group_size_and_skips_small_groups():
    score = [1, 2, 3, 4, 3, 2, 1, 9]
    acc = [1, 2, 3, 4, 1, 2, 3, 5]
    groups = ["a", "a", "a", "a", "b", "b", "b", "c"]  # a: rho 1 (4 trials); b: -1 (3); c: too small
    rho, n = within_group_spearman(score, acc, groups)
    assert n == 7 and rho == pytest.approx((4 * 1 + 3 * -1) / 7)


# --------------------------------------------------------------------------- noise ceiling


def test_noise_ceiling_is_high_for_well_separated_trials_and_low_for_close_ones():
    rng = np.random.default_rng(0)
    images = 2000
    far = np.stack([rng.random(images) < p for p in (0.60, 0.70, 0.80, 0.90)])
    close = np.stack([rng.random(images) < p for p in (0.850, 0.852, 0.854, 0.856)])
    assert noise_ceiling(far, n_boot=200) > 0.95
    assert noise_ceiling(close, n_boot=200) < 0.7
    assert noise_ceiling(far, n_boot=200, seed=1) == noise_ceiling(far, n_boot=200, seed=1)


def test_noise_ceiling_resamples_images_jointly():
    # Trials that differ by a fixed set of images: resampling images keeps their order, since
    # the same draw applies to every trial. Independent resampling would scramble them.
    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.8
    nested = np.stack([base.copy() for _ in range(5)])
    wrong = np.flatnonzero(base)
    for i in range(5):
        nested[i, wrong[: 4 * (4 - i)]] = False  # trial i misses 4 * (4 - i) more images
    assert noise_ceiling(nested, n_boot=200) > 0.9


def test_noise_ceiling_is_the_mean_rho_over_resamples_drawn_one_at_a_time():
    # The definition, written as a loop over resamples; the function draws them in blocks.
    rng = np.random.default_rng(2)
    correct = rng.random((6, 150)) < np.array([[0.5], [0.55], [0.55], [0.6], [0.7], [0.71]])
    correct[2] = correct[1]  # two trials tied on every resample
    draws = np.random.default_rng(7)
    rhos = [spearman(correct.mean(1), correct[:, draws.integers(0, 150, size=150)].mean(1)) for _ in range(250)]
    assert noise_ceiling(correct, n_boot=250, seed=7) == pytest.approx(np.nanmean(rhos), abs=1e-12)


def test_noise_ceiling_undefined_cases():
    assert math.isnan(noise_ceiling(np.ones((2, 10), dtype=bool)))
    assert math.isnan(noise_ceiling(np.ones((4, 10), dtype=bool)))  # all trials equal
