"""How well a label-free criterion agrees with a labelled reference over a sweep.

Pure functions of numbers: rank correlations with a bootstrap interval, the regret of the
criterion's pick, the overlap of the two top-k sets, the correlation within groups of trials,
and the sweep's noise ceiling (how far a *perfect* criterion would get against a reference
that is itself measured on finitely many images).

Sign convention: a criterion has a *mode*, ``"min"`` when lower is better (a loss) and
``"max"`` when higher is better. Correlations are oriented so that a good criterion always
gives a positive value: for ``"min"`` the criterion is negated first.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "spearman",
    "kendall",
    "bootstrap_ci",
    "regret",
    "top_k_overlap",
    "within_group_spearman",
    "noise_ceiling",
    "Agreement",
    "agreement",
]

_MODES = ("min", "max")


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``x``, ``y`` as equal-length 1-D float64 arrays ``(n,)``; ``ValueError`` otherwise."""
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    return xa, ya


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def _oriented(criterion: np.ndarray, mode: str) -> np.ndarray:
    """The criterion as a "higher is better" score (negated for ``mode="min"``)."""
    _check_mode(mode)
    return -criterion if mode == "min" else criterion


def _defined(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where a rank correlation of ``x`` and ``y`` along their last axis exists: both sides
    finite and neither constant (a bool per row; fewer than 3 points is checked apart)."""
    with np.errstate(invalid="ignore"):  # the range of a row of infinities, not finite anyway
        return np.isfinite(x).all(-1) & np.isfinite(y).all(-1) & (np.ptp(x, -1) > 0) & (np.ptp(y, -1) > 0)


def _rank_corr(fn: Callable, x: ArrayLike, y: ArrayLike) -> float:
    xa, ya = _pair(x, y)
    # Fewer than 3 points, a constant side or a nan: the correlation is undefined, not 0.
    # Checking here keeps scipy's ConstantInputWarning out of sweep logs.
    if xa.size < 3 or not _defined(xa, ya):
        return math.nan
    return float(fn(xa, ya).statistic)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's ρ of ``x`` and ``y`` (both ``(n,)``), ties at mean ranks; ``nan`` when
    ``n < 3``, when either side is constant, or when an input holds a non-finite value."""
    return _rank_corr(stats.spearmanr, x, y)


def _spearman_rows(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """:func:`spearman` of every pair of rows along ``axis`` at once (the batch of resamples
    of :func:`bootstrap_ci`, the resampled references of :func:`noise_ceiling`): ranks
    (ties at their mean) correlated as Pearson's r, ``nan`` where :func:`spearman` is."""
    x, y = np.broadcast_arrays(np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1))
    if x.shape[-1] < 3:
        return np.full(x.shape[:-1], math.nan)
    defined = _defined(x, y)
    rx, ry = (stats.rankdata(np.where(defined[..., None], v, 0.0), axis=-1) for v in (x, y))
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    return np.where(defined, np.clip(r, -1.0, 1.0), math.nan)


def kendall(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's τ-b of ``x`` and ``y``, which corrects for ties in either; ``nan`` as
    :func:`spearman`."""
    return _rank_corr(stats.kendalltau, x, y)


def bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], float] = spearman,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``statistic(x, y)`` (``scipy.stats.bootstrap``).

    Pairs are resampled together, so the dependence between ``x`` and ``y`` is kept. A resample
    that draws too few distinct trials has no rank correlation (``nan``); scipy's percentile
    interval would then be ``nan`` as a whole, so the quantiles are taken over the finite
    resamples of scipy's bootstrap distribution. ``(nan, nan)`` when ``n < 3`` or none is finite.
    Deterministic for a given ``seed``. For :func:`spearman` (the default) the resamples are
    ranked all at once, 34–145 times faster than one at a time for 64 to 8 trials
    (``experiments/analysis_speed.py``), with the same resamples and the same values.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    xa, ya = _pair(x, y)
    if xa.size < 3:
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about the nan resamples handled below
        fast = statistic is spearman
        res = stats.bootstrap(
            (xa, ya), _spearman_rows if fast else statistic, paired=True, vectorized=fast, n_resamples=n_boot,
            confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
        )
    values = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return (float(lo), float(hi))


def _finite_pair(criterion: ArrayLike, accuracy: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c, a = _pair(criterion, accuracy)
    if not (np.isfinite(c).all() and np.isfinite(a).all()):
        raise ValueError("criterion and accuracy must be finite; drop diverged trials first")
    return c, a


def regret(criterion: ArrayLike, accuracy: ArrayLike, mode: str = "min") -> float:
    """Best accuracy minus the accuracy of the trial the criterion picks (``>= 0``).

    Ties for the best criterion value go to the *first* trial in input order (``np.argmin``'s
    rule), so the result never depends on luck. Inputs ``(n,)`` must be finite; ``nan`` for
    ``n = 0``.
    """
    _check_mode(mode)
    c, a = _finite_pair(criterion, accuracy)
    if c.size == 0:
        return math.nan
    pick = int(np.argmin(c) if mode == "min" else np.argmax(c))
    return float(a.max() - a[pick])


def top_k_overlap(criterion: ArrayLike, accuracy: ArrayLike, k: int = 3, mode: str = "min") -> float:
    """``|top-k by criterion ∩ top-k by accuracy| / k`` in [0, 1], ``k`` clamped to ``n``; ties
    at the boundary broken by first occurrence, as in :func:`regret`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c, a = _finite_pair(criterion, accuracy)
    if c.size == 0:
        return math.nan
    score = _oriented(c, mode)
    k = min(k, c.size)
    by_criterion = set(np.argsort(-score, kind="stable")[:k].tolist())
    by_accuracy = set(np.argsort(-a, kind="stable")[:k].tolist())
    return len(by_criterion & by_accuracy) / k


def within_group_spearman(score: ArrayLike, accuracy: ArrayLike, groups: Sequence[Hashable]) -> tuple[float, int]:
    """Spearman ρ computed inside each group of equal ``groups`` value (e.g. equal batch size
    and views) with at least 3 trials, averaged weighted by group size; and how many trials
    such groups hold. A criterion that only tracks what differs *between* groups scores about
    0 here. ``(nan, 0)`` when no group has 3 trials."""
    s, a = _pair(score, accuracy)
    keys = list(groups)
    if len(keys) != s.size:
        raise ValueError(f"got {len(keys)} group labels for {s.size} values")
    total, weight = 0.0, 0
    for key in dict.fromkeys(keys):
        rows = [i for i, g in enumerate(keys) if g == key]
        rho = spearman(s[rows], a[rows]) if len(rows) >= 3 else math.nan
        if math.isfinite(rho):
            total += rho * len(rows)
            weight += len(rows)
    return (total / weight if weight else math.nan), weight


def noise_ceiling(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> float:
    """The Spearman ρ a *perfect* criterion would reach against a reference measured on
    finitely many images: ``correct (trials, images)`` says which images each trial's probe
    got right. The images are resampled (the same draw for every trial, since trials share
    them), and the result is the mean ρ between the reference accuracies and their resampled
    versions. ``nan`` with fewer than 3 trials or when all trials score the same."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 3 or c.shape[1] < 1:
        return math.nan
    acc = c.mean(1)
    if np.ptp(acc) == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    rhos = []
    for start in range(0, n_boot, 100):  # 100 resamples at a time: (100, images) counts in memory
        idx = rng.integers(0, c.shape[1], size=(min(100, n_boot - start), c.shape[1]))
        counts = np.stack([np.bincount(row, minlength=c.shape[1]) for row in idx]).astype(np.float64)
        resampled = counts @ c.T / c.shape[1]  # (resamples, trials): each trial's accuracy on each resample
        rhos.append(_spearman_rows(acc[None, :], resampled))
    rhos = np.concatenate(rhos)
    rhos = rhos[np.isfinite(rhos)]
    return float(np.mean(rhos)) if rhos.size else math.nan


@dataclass(frozen=True)
class Agreement:
    """How well one label-free criterion agrees with the labelled reference over a sweep.

    ``spearman`` and ``kendall`` are oriented (positive: a better criterion value goes with a
    higher accuracy). ``within`` is Spearman inside groups of equal batch size and views, over
    ``within_n`` trials. ``n`` counts the trials used; ``excluded`` the ids dropped for a
    non-finite criterion or accuracy. ``regret`` is in accuracy units (0: a best trial).
    """

    criterion: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    within: float
    within_n: int
    regret: float
    top3_overlap: float
    excluded: tuple[str, ...]


def agreement(
    name: str,
    trial_ids: Sequence,
    criterion_values: ArrayLike,
    accuracies: ArrayLike,
    mode: str = "min",
    groups: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Agreement:
    """Agreement between a criterion and accuracy, one entry per trial: ``trial_ids``,
    ``criterion_values`` and ``accuracies`` ``(n,)``, ``groups`` (optional) the label of each
    trial's group for :func:`within_group_spearman`. Trials whose criterion or accuracy is not
    finite (diverged) are dropped first and listed in ``excluded``."""
    _check_mode(mode)
    ids = [str(t) for t in trial_ids]
    c, a = _pair(criterion_values, accuracies)
    if len(ids) != c.size:
        raise ValueError(f"got {len(ids)} trial ids for {c.size} values")
    keep = np.isfinite(c) & np.isfinite(a)
    c, a = c[keep], a[keep]
    score = _oriented(c, mode)
    kept_groups = [g for g, k in zip(groups, keep) if k] if groups is not None else [0] * int(keep.sum())
    within, within_n = within_group_spearman(score, a, kept_groups)
    return Agreement(
        criterion=name,
        n=int(c.size),
        spearman=spearman(score, a),
        spearman_ci=bootstrap_ci(score, a, spearman, n_boot=n_boot, seed=seed),
        kendall=kendall(score, a),
        within=within,
        within_n=within_n,
        regret=regret(c, a, mode=mode),
        top3_overlap=top_k_overlap(c, a, k=3, mode=mode),
        excluded=tuple(i for i, kept in zip(ids, keep) if not kept),
    )
