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

On top of the statistics sit the *criteria* a sweep can be judged by (:data:`CRITERIA`): the
final training loss, the paper's ``loss / lam**alpha``, RankMe, and the fixed-yardstick loss
of :mod:`lejepa_tune.yardstick`. Each is computed per trial from label-free quantities only;
:func:`choose` picks a trial by one of them, never looking at labels. Labels enter only in
:func:`evaluate_criteria`, to *measure* how well each criterion would have chosen.

Which criteria are honest depends on what the sweep varies (:func:`criterion_validity`): the
SIGReg statistic grows linearly with the batch size ``N`` and the loss depends on the views,
so raw losses of trials with different ``train.batch_size`` or ``views.*`` do not compare.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .config import FrozenDict

if TYPE_CHECKING:  # sweep imports Ray: keep this module light
    from .search_space import SweepSpec
    from .sweep import TrialRecord

__all__ = [
    "spearman",
    "kendall",
    "bootstrap_ci",
    "regret",
    "top_k_overlap",
    "Agreement",
    "agreement",
    "Criterion",
    "CRITERIA",
    "ACCURACY_KEY",
    "get_criterion",
    "trial_lam",
    "Validity",
    "criterion_validity",
    "default_criterion",
    "choose",
    "merge_metrics",
    "SelectionReport",
    "evaluate_criteria",
    "selection_metrics",
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


# --------------------------------------------------------------------------- criteria

# The labelled metric criteria are judged against. Labels never choose: only this module's
# evaluate_criteria reads it, to measure a criterion.
ACCURACY_KEY = "eval/linear_acc"
# The exponent of ``loss / lam**alpha`` when no sweep spec says otherwise (the paper's value).
DEFAULT_ALPHA = 0.4

# Searched keys that change the *scale* of the training loss, so that raw losses of trials
# that differ in them measure different things: SIGReg's statistic is N times a distance
# (N = train.batch_size), the invariance term depends on the number and kind of views, and
# the regulariser's definition (which one, its knots, its t range) is the statistic itself.
# The projector dimension is not among them: invariance is a mean over coordinates and each
# SIGReg slice is a 1-D projection on a unit direction, so both are per-dimension normalised.
_SCALE_KEYS = ("train.batch_size", "loss.regularizer", "loss.num_knots", "loss.t_max")
_SCALE_PREFIXES = ("views.",)


def _metric(trial: TrialRecord, key: str) -> float:
    """``trial.metrics[key]`` as a float; ``nan`` when missing or not a number."""
    value = trial.metrics.get(key)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def trial_lam(trial: TrialRecord, spec: SweepSpec | None = None) -> float:
    """The trial's ``loss.lam``: its searched value, else the sweep's base config value
    (``nan`` when ``lam`` was not searched and no ``spec`` is given)."""
    if "loss.lam" in trial.params:
        try:
            return float(trial.params["loss.lam"])
        except (TypeError, ValueError):
            return math.nan
    return float(spec.base.loss.lam) if spec is not None else math.nan


def _final_loss(trial: TrialRecord, spec: SweepSpec | None) -> float:
    return _metric(trial, "train/loss")


def _scaled_loss(trial: TrialRecord, spec: SweepSpec | None) -> float:
    alpha = spec.selection.alpha if spec is not None else DEFAULT_ALPHA
    lam = trial_lam(trial, spec)
    if not lam > 0 and alpha > 0:  # lam = 0 (or unknown): loss / 0**alpha is undefined
        return math.nan
    return _metric(trial, "train/loss") / lam**alpha


def _rankme(trial: TrialRecord, spec: SweepSpec | None) -> float:
    return _metric(trial, "eval/rankme")


def _rankme_backbone(trial: TrialRecord, spec: SweepSpec | None) -> float:
    return _metric(trial, "eval/rankme_backbone")


def _yardstick(trial: TrialRecord, spec: SweepSpec | None) -> float:
    return _metric(trial, "yardstick/loss")


@dataclass(frozen=True)
class Criterion:
    """A label-free way to rank trials: ``fn(trial, spec) -> float`` (``nan`` when the trial
    lacks what it needs) and whether lower (``"min"``) or higher (``"max"``) is better."""

    name: str
    mode: str
    fn: Callable[[Any, Any], float]
    description: str

    def value(self, trial: TrialRecord, spec: SweepSpec | None = None) -> float:
        return float(self.fn(trial, spec))


CRITERIA: Mapping[str, Criterion] = FrozenDict(
    (c.name, c)
    for c in (
        Criterion("loss", "min", _final_loss, "final training loss train/loss"),
        Criterion("scaled_loss", "min", _scaled_loss, "train/loss / lam**alpha, the paper's λ-corrected loss"),
        Criterion("rankme", "max", _rankme, "RankMe (effective rank) of the frozen validation embeddings (projector outputs)"),
        Criterion("rankme_backbone", "max", _rankme_backbone, "RankMe of the frozen validation backbone features"),
        Criterion(
            "yardstick",
            "min",
            _yardstick,
            "LeJEPA loss of every encoder re-measured on the same held-out images, views, batch size and λ",
        ),
    )
)


def get_criterion(criterion: str | Criterion) -> Criterion:
    """The registered criterion of that name (a :class:`Criterion` is returned as is)."""
    if isinstance(criterion, Criterion):
        return criterion
    try:
        return CRITERIA[criterion]
    except KeyError:
        raise ValueError(f"unknown selection criterion {criterion!r} (known: {', '.join(CRITERIA)})") from None


class Validity(NamedTuple):
    """Whether a criterion ranks a sweep's trials on one scale, and why (or why not)."""

    valid: bool
    reason: str


def _scale_keys(spec: SweepSpec) -> list[str]:
    return [k for k in spec.search if k in _SCALE_KEYS or k.startswith(_SCALE_PREFIXES)]


def criterion_validity(spec: SweepSpec) -> dict[str, Validity]:
    """For each criterion of :data:`CRITERIA`, whether it is valid for this sweep.

    ``loss`` and ``scaled_loss`` are invalid when the sweep searches a key that changes the
    scale of the loss (``train.batch_size``, any ``views.*``, the regulariser's definition);
    ``rankme`` and ``yardstick`` are measured the same way for every trial.
    """
    varied = _scale_keys(spec)
    if varied:
        why = (
            f"the sweep searches {', '.join(varied)}: raw training losses are on different scales "
            "(SIGReg's statistic grows with the batch size N; the loss depends on the views)"
        )
        loss = Validity(False, why)
    else:
        loss = Validity(True, "every trial's loss is measured on the same batch size and views")
    return {
        "loss": loss,
        "scaled_loss": loss,
        "rankme": Validity(True, "computed the same way on the frozen validation embeddings of every trial"),
        "rankme_backbone": Validity(True, "computed the same way on the frozen validation features of every trial"),
        "yardstick": Validity(True, "one fixed batch size, set of views, SIGReg slices and λ for every trial"),
    }


def default_criterion(spec: SweepSpec) -> tuple[str, str]:
    """``(criterion name, why)``: ``selection.criterion`` when it is set, else the criterion
    that suits what the sweep varies.

    * batch size, views (or the regulariser's definition) vary: ``yardstick``, since raw
      losses then do not compare;
    * ``loss.lam`` varies: ``scaled_loss`` (the paper: Spearman ≈ 0.99 for ``loss / λ^α``
      against ≈ 0.85 for the raw loss);
    * otherwise: ``loss``.
    """
    chosen = spec.selection.criterion
    if chosen != "auto":
        name = get_criterion(chosen).name
        valid, why = criterion_validity(spec)[name]
        reason = f"selection.criterion is set to {name!r}"
        return name, reason if valid else f"{reason}, although it is not valid for this sweep: {why}"
    varied = _scale_keys(spec)
    if varied:
        return "yardstick", (
            f"the sweep searches {', '.join(varied)}: raw training losses are not comparable, because "
            "SIGReg's statistic scales with the batch size N and the loss depends on the views; the "
            "yardstick re-measures every encoder on the same held-out images, views, batch size and λ"
        )
    if "loss.lam" in spec.search:
        return "scaled_loss", (
            f"the sweep searches loss.lam: λ weighs invariance against SIGReg, so raw losses of "
            f"different λ are biased; loss / λ^α (α = {spec.selection.alpha:g}) corrects for it"
        )
    return "loss", "the sweep varies neither λ, the batch size nor the views: final training losses compare directly"


def choose(
    trials: Iterable[TrialRecord], criterion: str | Criterion, spec: SweepSpec | None = None
) -> TrialRecord | None:
    """The label-free pick: the *completed* trial with the best finite criterion value.

    Stopped, failed and diverged trials never win. Ties go to the first trial in input
    order (as in :func:`regret`). ``None`` when no completed trial has a finite value.
    ``spec`` supplies ``alpha`` and the base ``lam`` for ``scaled_loss``.
    """
    crit = get_criterion(criterion)
    best, best_score = None, math.inf
    for trial in trials:
        if trial.status != "completed":
            continue
        value = crit.value(trial, spec)
        if not math.isfinite(value):
            continue
        score = value if crit.mode == "min" else -value
        if score < best_score:
            best, best_score = trial, score
    return best


def merge_metrics(trials: Iterable[TrialRecord], extra: Mapping[str, Mapping[str, float]]) -> list[TrialRecord]:
    """The trials with ``extra[trial_id]`` added to their metrics (e.g. the ``yardstick/*``
    values of :func:`lejepa_tune.yardstick.yardstick_for_sweep`); others are unchanged."""
    return [
        dataclasses.replace(t, metrics={**t.metrics, **extra[t.trial_id]}) if t.trial_id in extra else t
        for t in trials
    ]


@dataclass(frozen=True)
class SelectionReport:
    """Every criterion evaluated on one sweep.

    ``values[c][trial_id]`` is criterion ``c`` of every trial (``nan`` where undefined);
    ``picks[c]`` the id of the trial ``c`` chooses among completed trials (``None`` if none);
    ``agreements[c]`` how well ``c`` agrees with ``accuracy`` over the completed trials (those
    with a non-finite value or accuracy are dropped and listed in its ``excluded``);
    ``not_completed`` maps the other trials (stopped, failed) to their status. ``default`` is
    the criterion to select with and ``reason`` says why; ``validity[c]`` says whether ``c``
    compares trials on one scale in this sweep. ``best_by_accuracy`` is the labelled oracle's
    pick, for reference only; ``lams`` the effective ``loss.lam`` of each trial.
    """

    sweep: str
    criteria: tuple[str, ...]
    modes: Mapping[str, str]
    values: Mapping[str, Mapping[str, float]]
    picks: Mapping[str, str | None]
    agreements: Mapping[str, Agreement]
    validity: Mapping[str, Validity]
    default: str
    reason: str
    accuracy: str
    best_by_accuracy: str | None
    lams: Mapping[str, float]
    not_completed: Mapping[str, str]
    alpha: float


def evaluate_criteria(
    trials: Sequence[TrialRecord],
    spec: SweepSpec,
    *,
    accuracy: str = ACCURACY_KEY,
    n_boot: int = 1000,
    seed: int = 0,
) -> SelectionReport:
    """Computes every criterion of :data:`CRITERIA` for every trial, the pick of each, and its
    :class:`Agreement` with the labelled ``accuracy`` over the completed trials.

    Labels are read here only to *evaluate* the criteria; the picks never depend on them.
    A criterion whose values were not computed (e.g. no ``yardstick/loss`` merged in) gets
    ``n = 0`` and ``nan`` statistics.
    """
    trials = list(trials)
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("trial ids must be unique")
    completed = [t for t in trials if t.status == "completed"]
    acc = [_metric(t, accuracy) for t in completed]
    values, picks, agreements = {}, {}, {}
    for name, crit in CRITERIA.items():
        values[name] = FrozenDict((t.trial_id, crit.value(t, spec)) for t in trials)
        pick = choose(completed, crit, spec)
        picks[name] = pick.trial_id if pick is not None else None
        agreements[name] = agreement(
            name,
            [t.trial_id for t in completed],
            [values[name][t.trial_id] for t in completed],
            acc,
            mode=crit.mode,
            n_boot=n_boot,
            seed=seed,
        )
    finite = [(a, t.trial_id) for a, t in zip(acc, completed) if math.isfinite(a)]
    # The first best in input order, as every pick here.
    best = max(finite, key=lambda pair: pair[0])[1] if finite else None
    default, reason = default_criterion(spec)
    return SelectionReport(
        sweep=spec.name,
        criteria=tuple(CRITERIA),
        modes=FrozenDict((n, c.mode) for n, c in CRITERIA.items()),
        values=FrozenDict(values),
        picks=FrozenDict(picks),
        agreements=FrozenDict(agreements),
        validity=FrozenDict(criterion_validity(spec)),
        default=default,
        reason=reason,
        accuracy=accuracy,
        best_by_accuracy=best,
        lams=FrozenDict((t.trial_id, trial_lam(t, spec)) for t in trials),
        not_completed=FrozenDict((t.trial_id, t.status) for t in trials if t.status != "completed"),
        alpha=float(spec.selection.alpha),
    )


def selection_metrics(report: SelectionReport) -> dict[str, float]:
    """Flat MLflow metrics ``selection/<criterion>/{spearman, spearman_lo, spearman_hi,
    kendall, regret, top3_overlap, n}`` for the sweep's parent run.

    Non-finite values are left out: MLflow would store a NaN as 0 with a flag and ±inf as
    ±1.8e308, which charts and run comparisons show as if they were numbers. A missing key
    says "undefined" (e.g. fewer than 3 trials) without lying.
    """
    out: dict[str, float] = {}
    for name in report.criteria:
        a = report.agreements[name]
        stats = {
            "spearman": a.spearman,
            "spearman_lo": a.spearman_ci[0],
            "spearman_hi": a.spearman_ci[1],
            "kendall": a.kendall,
            "regret": a.regret,
            "top3_overlap": a.top3_overlap,
            "n": float(a.n),
        }
        out.update({f"selection/{name}/{k}": float(v) for k, v in stats.items() if math.isfinite(v)})
    return out
