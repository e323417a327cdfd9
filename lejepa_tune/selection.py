"""Label-free model selection: how well a criterion agrees with labelled accuracy.

A sweep yields, per trial, a label-free *criterion* (e.g. the final LeJEPA loss) and a labelled
*accuracy* (frozen linear probe). This module measures how well picking by the criterion
matches picking by accuracy: rank correlations with a bootstrap interval, the regret of the
criterion's pick, and the overlap of the two top-k sets.

Everything here is a pure function of numbers (numpy arrays, lists), with no Ray or MLflow,
so it can be tested on hand-made trial tables and reused on any exported sweep.

Sign convention. A criterion has a *mode*: ``"min"`` when lower is better (a loss), ``"max"``
when higher is better (RankMe). The correlations reported by :func:`agreement` are oriented so
that a *good* criterion always gives a *positive* correlation with accuracy; for ``"min"`` the
criterion is negated first.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "spearman",
    "kendall",
    "bootstrap_ci",
    "regret",
    "top_k_overlap",
    "Agreement",
    "agreement",
]

_MODES = ("min", "max")


# --------------------------------------------------------------------------- helpers


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
    """The criterion turned into a "higher is better" score (negated for ``mode="min"``)."""
    _check_mode(mode)
    return -criterion if mode == "min" else criterion


def _rank_corr(fn: Callable, x: ArrayLike, y: ArrayLike) -> float:
    xa, ya = _pair(x, y)
    # Fewer than 3 points or a constant side: the correlation is undefined, not 0. Checking
    # here keeps scipy's ConstantInputWarning from leaking into sweep logs.
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(fn(xa, ya).statistic)


# --------------------------------------------------------------------------- statistics


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation ρ of ``x`` and ``y`` (both ``(n,)``); ties get mean ranks.

    ``nan`` when ``n < 3``, when either input is constant, or when an input holds ``nan``.
    """
    from scipy.stats import spearmanr

    return _rank_corr(spearmanr, x, y)


def kendall(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's τ-b of ``x`` and ``y`` (both ``(n,)``), which corrects for ties in either.

    ``nan`` when ``n < 3``, when either input is constant, or when an input holds ``nan``.
    """
    from scipy.stats import kendalltau

    return _rank_corr(kendalltau, x, y)


def bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` over resampled ``(x_i, y_i)`` pairs.

    Each of ``n_boot`` resamples draws ``n`` pairs with replacement (pairs stay together, so
    the dependence between ``x`` and ``y`` is kept). Resamples where the statistic is ``nan``
    (e.g. every draw hit the same trial, making an input constant) are skipped; the interval is
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the rest. Returns
    ``(nan, nan)`` when ``n < 3`` or no resample gave a finite value. Deterministic for a
    given ``seed``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    xa, ya = _pair(x, y)
    n = xa.size
    if n < 3:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n): one resample per row
    values = np.array([statistic(xa[i], ya[i]) for i in idx], dtype=np.float64)
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

    The criterion picks ``argmin`` (``mode="min"``) or ``argmax`` (``mode="max"``); when
    several trials tie for the best criterion value the *first* one (in input order) is picked,
    the ``np.argmin``/``np.argmax`` rule, so the result never depends on luck. Inputs ``(n,)``
    must be finite; ``nan`` for ``n = 0``.
    """
    _check_mode(mode)
    c, a = _finite_pair(criterion, accuracy)
    if c.size == 0:
        return math.nan
    pick = int(np.argmin(c) if mode == "min" else np.argmax(c))
    return float(a.max() - a[pick])


def top_k_overlap(
    criterion: ArrayLike, accuracy: ArrayLike, k: int = 3, mode: str = "min"
) -> float:
    """``|top-k by criterion ∩ top-k by accuracy| / k``, in [0, 1].

    ``k`` is clamped to the number of trials. Ties at the top-k boundary are broken by first
    occurrence (stable sort), as in :func:`regret`. Inputs ``(n,)`` must be finite; ``nan``
    for ``n = 0``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c, a = _finite_pair(criterion, accuracy)
    score = _oriented(c, mode)
    if c.size == 0:
        return math.nan
    k = min(k, c.size)
    # Stable argsort of the negated score = descending order with first occurrence first.
    by_criterion = set(np.argsort(-score, kind="stable")[:k].tolist())
    by_accuracy = set(np.argsort(-a, kind="stable")[:k].tolist())
    return len(by_criterion & by_accuracy) / k


# --------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """How well one label-free criterion agrees with labelled accuracy over a sweep.

    ``spearman`` and ``kendall`` are oriented so that positive means "a better criterion value
    goes with higher accuracy" whatever the criterion's mode. ``n`` counts the trials used;
    ``excluded`` lists the ids of trials dropped for a non-finite criterion or accuracy.
    ``regret`` is in accuracy units (0 = the criterion picked a best trial).
    """

    criterion: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    regret: float
    top3_overlap: float
    excluded: tuple[str, ...]


def agreement(
    name: str,
    trial_ids: Sequence,
    criterion_values: ArrayLike,
    accuracies: ArrayLike,
    mode: str = "min",
    n_boot: int = 1000,
    seed: int = 0,
) -> Agreement:
    """Agreement statistics between a criterion and accuracy, one entry per trial.

    Args:
        name: the criterion's name, e.g. ``"train/loss"``.
        trial_ids: ``(n,)`` trial identifiers (stored as ``str`` in ``excluded``).
        criterion_values: ``(n,)`` label-free criterion, one per trial.
        accuracies: ``(n,)`` labelled accuracy (e.g. linear probe), one per trial.
        mode: ``"min"`` if a lower criterion is better (a loss), ``"max"`` if higher is better.

    Sign convention: correlations are computed between the *oriented* criterion (``-criterion``
    for ``mode="min"``, ``criterion`` for ``"max"``) and accuracy, so a good criterion gives
    ``spearman`` and ``kendall`` near ``+1`` and a misleading one a negative value. For a loss,
    ρ = +1 means "the lowest loss had the highest accuracy, and so on down the ranking".

    Trials whose criterion or accuracy is ``nan``/``±inf`` (diverged) are dropped before
    anything is computed, and their ids recorded in ``excluded``. The Spearman interval is a
    percentile bootstrap (:func:`bootstrap_ci`) with ``n_boot`` resamples and ``seed``.
    """
    _check_mode(mode)
    ids = [str(t) for t in trial_ids]
    c, a = _pair(criterion_values, accuracies)
    if len(ids) != c.size:
        raise ValueError(f"got {len(ids)} trial ids for {c.size} values")
    keep = np.isfinite(c) & np.isfinite(a)
    c, a = c[keep], a[keep]
    score = _oriented(c, mode)
    return Agreement(
        criterion=name,
        n=int(c.size),
        spearman=spearman(score, a),
        spearman_ci=bootstrap_ci(score, a, spearman, n_boot=n_boot, seed=seed),
        kendall=kendall(score, a),
        regret=regret(c, a, mode=mode),
        top3_overlap=top_k_overlap(c, a, k=3, mode=mode),
        excluded=tuple(i for i, kept in zip(ids, keep) if not kept),
    )
