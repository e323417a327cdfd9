"""Search-space YAML -> a validated :class:`SweepSpec` (and Optuna distributions).

A search space names a sweep, its base training config (inline, or a path relative to the
YAML file), the distributions of dotted config keys, and how Tune, Ray resources, MLflow and
label-free selection are set up::

    name: lambda_sweep
    base: {train: {epochs: 8}}          # or: base: ../configs/tiny.yaml
    search:
      loss.lam: {type: loguniform, low: 0.005, high: 0.5}
      views.n_global: {type: choice, values: [2, 4]}
    tune: {num_samples: 8, metric: labelfree/objective, mode: max, seed: 0, searcher: tpe, scheduler: none}
    resources: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: auto}
    tracking: {experiment: null, tracking_uri: null}
    selection: {criterion: auto}

Every error is a one-line :class:`~lejepa_tune.config.ConfigError` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

import optuna

from .config import (
    CROSS_FIELD_KEYS,
    Config,
    ConfigError,
    FrozenDict,
    build_dataclass,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    parse_overrides,
    read_yaml,
    to_plain,
)
from .metrics import OBJECTIVE, OBJECTIVE_MODE, criterion_keys, label_free_modes, reads_labels
from .records import mask_uri

__all__ = [
    "Distribution",
    "TuneSpec",
    "ResourcesSpec",
    "TrackingSpec",
    "SelectionSpec",
    "SweepSpec",
    "load_sweep_spec",
    "sweep_spec_from_dict",
    "trial_config",
    "corners",
    "spec_to_dict",
    "absolute_dataset",
]

DISTRIBUTION_TYPES = ("loguniform", "uniform", "int", "qint", "choice")
SWEEP_SECTIONS = ("name", "base", "search", "tune", "resources", "tracking", "selection")


@dataclass(frozen=True)
class Distribution:
    """One searched key: ``loguniform``/``uniform`` over ``[low, high]``, ``int``/``qint`` over
    integers ``[low, high]`` (``qint`` in steps of ``step``), or ``choice`` among ``values``."""

    type: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    values: tuple[Any, ...] | None = None

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        if self.type == "loguniform":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=True)
        if self.type == "uniform":
            return optuna.distributions.FloatDistribution(self.low, self.high)
        if self.type in ("int", "qint"):
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), step=self.step or 1)
        return optuna.distributions.CategoricalDistribution(list(self.values))

    def extremes(self) -> list[Any]:
        """The values at the edges of the range (each must give a valid config)."""
        if self.type == "choice":
            return list(self.values)
        if self.type in ("int", "qint"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether the search can propose ``value``."""
        if self.type == "choice":
            return to_plain(value) in [to_plain(v) for v in self.values]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.type not in ("int", "qint") or (isinstance(value, int) and (value - self.low) % (self.step or 1) == 0)

    def describe(self) -> str:
        """``[2, 4]`` (choice) or ``[16, 64] step 16``."""
        if self.type == "choice":
            return f"{list(self.values)}"
        return f"[{self.low}, {self.high}]" + (f" step {self.step}" if self.step and self.step > 1 else "")


@dataclass(frozen=True)
class TuneSpec:
    num_samples: int = field(default=8, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    # The label-free metric Optuna's TPE and ASHA optimise; by default the declared objective,
    # the one the final choice uses too. Labels never choose: a metric that reads labels is
    # refused.
    metric: str = OBJECTIVE
    mode: Literal["min", "max"] = OBJECTIVE_MODE
    seed: int = 0
    # Optuna's sampler: TPE (learns from the trials so far), or random (draws every trial
    # independently; with ASHA the fair comparison, as FIFO and ASHA then run the same trials).
    searcher: Literal["tpe", "random"] = "tpe"
    # ASHA (asynchronous successive halving), or sha: synchronous successive halving, where
    # every trial waits at each rung for the others (schedulers.SuccessiveHalving).
    scheduler: Literal["none", "asha", "sha"] = "none"
    # ASHA and sha: the minimum number of epochs before a trial may be stopped, and the halving rate.
    grace_period: int = field(default=1, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    reduction_factor: float = field(default=2.0, metadata={"check": (lambda v: v > 1, "a number > 1")})
    # sha: halve the trials in this many cohorts, one after another (num_samples split evenly,
    # in the order they are proposed), each through the same rungs. A cohort's trials are
    # proposed once the cohort before is down to the trials that train to the end, so TPE
    # learns from every trial the earlier cohorts stopped (BOHB's way); with one cohort, TPE
    # proposes every trial before any has ended, as random search would.
    cohorts: int = field(default=1, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    # Points evaluated first, e.g. the paper's defaults: [{loss.lam: 0.05, optim.lr: 0.002}].
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()
    # null: as many trials as the cluster's CPUs (or GPUs) can hold at once.
    max_concurrent_trials: int | None = field(default=None, metadata={"check": (lambda v: v is None or v > 0, "null or an integer > 0")})
    # How often Ray Train restarts a trial's workers after a failure (from its last checkpoint).
    max_failures: int = field(default=2, metadata={"check": (lambda v: v >= 0, "an integer >= 0")})

    def cohort_sizes(self) -> list[int]:
        """How many trials each of ``cohorts`` holds: ``num_samples`` split evenly, the first
        cohorts one larger where it does not split."""
        n, k = self.num_samples, self.cohorts
        return [n // k + (i < n % k) for i in range(k)]

    def asha_rungs(self, epochs: int) -> list[int]:
        """The epochs after which ASHA may stop a trial of ``epochs`` epochs: Ray Tune's
        rungs (``grace_period · reduction_factorᵏ``, a trial reaching ``m`` epochs being
        compared at the first epoch ≥ ``m``), without the last epoch, where a trial is left to
        end by itself (``schedulers.FinishingASHA``). Empty without a scheduler."""
        if self.scheduler == "none" or epochs < 1:
            return []
        grace = min(self.grace_period, epochs)
        count = int(math.log(epochs / grace) / math.log(self.reduction_factor) + 1)  # as Tune's _Bracket counts them
        rungs = {math.ceil(grace * self.reduction_factor**k) for k in range(count)}
        return sorted(m for m in rungs if m < epochs)


@dataclass(frozen=True)
class ResourcesSpec:
    """Per trial: ``num_workers`` DDP processes, each with these CPUs and GPUs."""

    num_workers: int = field(default=1, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    cpus_per_worker: float = field(default=1.0, metadata={"check": (lambda v: v > 0, "a number > 0")})
    # "auto": one GPU per worker when the cluster has GPUs, none otherwise.
    gpus_per_worker: float | Literal["auto"] = "auto"


@dataclass(frozen=True)
class TrackingSpec:
    # The MLflow experiment (default: the sweep's name) and tracking URI (default:
    # ``sqlite:///mlflow.db`` in the working directory).
    experiment: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class SelectionSpec:
    # The criterion the final choice uses: "auto" is the declared objective (the metric the
    # search optimised too); any other registered label-free criterion may be named.
    criterion: str = "auto"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: Config
    base_data: Mapping[str, Any]  # the base config as data, for building trial configs
    search: Mapping[str, Distribution]
    tune: TuneSpec
    resources: ResourcesSpec
    tracking: TrackingSpec
    selection: SelectionSpec
    source: str


def _parse_distribution(key: str, raw: Any, source: str) -> Distribution:
    where = f"{source}: search.{key}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{type: loguniform, low: ..., high: ...}}, got {raw!r}")
    kind = raw.get("type")
    if kind not in DISTRIBUTION_TYPES:
        raise ConfigError(f"{where}.type: expected one of {', '.join(DISTRIBUTION_TYPES)}, got {kind!r}")
    allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high"} | ({"step"} if kind in ("int", "qint") else set())
    for extra in set(raw) - allowed:
        raise ConfigError(f"{where}.{extra}: unknown key for a {kind} distribution (known: {', '.join(sorted(allowed))})")
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        return Distribution("choice", values=tuple(values))
    for bound in ("low", "high"):
        v = raw.get(bound)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}.{bound}: expected a finite number, got {v!r}")
    low, high = raw["low"], raw["high"]
    if low > high:
        raise ConfigError(f"{where}: impossible range: low {low} > high {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.low: a loguniform range needs low > 0, got {low}")
    step = None
    if kind in ("int", "qint"):
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{where}: an {kind} range needs integer bounds, got [{low}, {high}]")
        step = raw.get("step", 1 if kind == "int" else None)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{where}.step: expected an integer >= 1, got {step!r}")
        if (high - low) % step:
            raise ConfigError(f"{where}: high - low ({high - low}) is not a multiple of step {step}")
    return Distribution(kind, low=float(low) if kind in ("loguniform", "uniform") else int(low), high=float(high) if kind in ("loguniform", "uniform") else int(high), step=step)


def _resolve_base(raw: Any, source: str, base_dir: Path) -> tuple[dict[str, Any], str, str]:
    """The base config as data, and the source and key prefix its errors name: an inline base
    is ``base.*`` of the space, a base file (relative to ``base_dir``) is its own file."""
    if raw is None or isinstance(raw, Mapping):
        return to_plain(raw or {}), source, "base"
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{source}: base: expected a mapping or the path of a config file, got {raw!r}")
    path = base_dir / Path(raw).expanduser()  # an absolute path stays as it is
    try:
        data = read_yaml(path)
    except ConfigError as err:
        raise ConfigError(f"{source}: base: {err}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{source}: base: {path}: expected a mapping at the top level, got {type(data).__name__}")
    return to_plain(data or {}), str(path), ""


def _error_detail(err: ConfigError) -> str:
    """``key: what is wrong`` of an error raised with an empty source."""
    return str(err).split(": ", 1)[-1]


def corners(search: Mapping[str, Distribution], keys: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every combination of the extreme values of the searched ``keys`` (the other keys are
    ignored; one empty combination when none is searched). Constraints that grow or shrink
    with each value (``views.local_size <= views.global_size``, a batch no larger than the
    dataset) hold for every trial when they hold at these corners."""
    wanted = set(keys)
    names = [k for k in search if k in wanted]
    for values in itertools.product(*(search[k].extremes() for k in names)):
        yield dict(zip(names, values))


def _parse_search(raw_search: Any, base_data: Mapping[str, Any], source: str) -> dict[str, Distribution]:
    raw_search = raw_search or {}
    if not isinstance(raw_search, Mapping):
        raise ConfigError(f"{source}: search: expected a mapping of dotted config keys to distributions, got {raw_search!r}")
    search: dict[str, Distribution] = {}
    for key, raw in raw_search.items():
        dist = _parse_distribution(str(key), raw, source)
        # Every value at the edges of the range must give a valid config: this catches
        # unknown keys (search.optim.lrr) and impossible values (loss.lam up to 1.5) early.
        for value in dist.extremes():
            try:
                config_from_dict(apply_overrides(base_data, {key: value}), "")
            except ConfigError as err:
                raise ConfigError(f"{source}: search.{key}: {value!r} is not a valid value here ({_error_detail(err)})") from None
        search[str(key)] = dist
    # Keys the config relates (views.local_size <= views.global_size): every combination.
    related = [k for k in search if k in CROSS_FIELD_KEYS]
    for params in corners(search, related) if len(related) > 1 else ():
        try:
            config_from_dict(apply_overrides(base_data, params), "")
        except ConfigError as err:
            detail = _error_detail(err)
            key = detail.split(":", 1)[0]
            where = f"search.{key}" if key in search else "search"
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"{source}: {where}: trials with {shown} would be invalid ({detail})") from None
    return search


def _section(data: Mapping[str, Any], cls: type, name: str, source: str) -> Any:
    raw = data.get(name) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {name}: expected a mapping, got {raw!r}")
    return build_dataclass(cls, raw, name, source)


def _check_metric(tune: TuneSpec, regularizers: Iterable[str], source: str) -> None:
    """``tune.metric`` is label-free and reported by every trial; ``tune.mode`` is its better side."""
    if reads_labels(tune.metric):
        raise ConfigError(f"{source}: tune.metric: {tune.metric} reads labels; the search must be label-free (e.g. {OBJECTIVE})")
    for regularizer in regularizers:
        modes = label_free_modes(regularizer)
        if tune.metric not in modes:
            raise ConfigError(f"{source}: tune.metric: unknown label-free metric {tune.metric!r} with loss.regularizer {regularizer!r} (known: {', '.join(modes)})")
        if tune.mode != modes[tune.metric]:
            raise ConfigError(f"{source}: tune.mode: {tune.metric} is better when {'lower' if modes[tune.metric] == 'min' else 'higher'}; expected {modes[tune.metric]}, got {tune.mode}")


def _check_points(points: Iterable[Mapping[str, Any]], search: Mapping[str, Distribution], base_data: Mapping[str, Any], source: str) -> None:
    """Each point to evaluate sets searched keys only, to values the search could propose."""
    for i, point in enumerate(points):
        where = f"{source}: tune.points_to_evaluate[{i}]"
        for key, value in point.items():
            if key not in search:
                raise ConfigError(f"{where}.{key}: not a searched key (searched: {', '.join(search) or 'none'})")
            if not search[key].contains(value):
                raise ConfigError(f"{where}.{key}: {value!r} is outside the searched {search[key].type} {search[key].describe()}")
        try:
            config_from_dict(apply_overrides(base_data, point), "")
        except ConfigError as err:
            raise ConfigError(f"{where}: {_error_detail(err)}") from None


def _check_batch_split(search: Mapping[str, Distribution], base: Config, workers: int, source: str) -> None:
    """Every global batch a trial can use splits evenly over its ``workers`` DDP processes."""
    dist = search.get("train.batch_size")
    if dist is None:
        where, batches = "base.train.batch_size", [base.train.batch_size]
    elif dist.type == "choice":
        where, batches = "search.train.batch_size", list(dist.values)
    else:  # the remainders of a range repeat after `workers` values
        where, batches = "search.train.batch_size", range(dist.low, dist.high + 1, dist.step or 1)[:workers]
    odd = next((b for b in batches if b % workers), None)
    if odd is not None:
        raise ConfigError(f"{source}: {where}: {odd} is not divisible by resources.num_workers ({workers}), the DDP processes that share each batch")


def _check_epochs(search: Mapping[str, Distribution], base: Config, tune: TuneSpec, source: str) -> None:
    """Every trial trains at least one epoch. A trial of 0 epochs only measures its untrained
    encoder (``lejepa-tune train`` takes 0 for that baseline): a sweep of them would tune
    nothing that training does (λ, the learning rate, the batch size act on none of them) and
    pick among random initialisations. ASHA takes one number of epochs for every trial: its
    rungs compare trials at equal epochs, which mean other points of their learning-rate
    schedules where trials train for different lengths, and a shorter trial's last epoch would
    be taken for a rung, where ASHA may stop it."""
    dist = search.get("train.epochs")
    where, fewest = ("base.train.epochs", base.train.epochs) if dist is None else ("search.train.epochs", min(dist.extremes()))
    if fewest < 1:
        raise ConfigError(f"{source}: {where}: a sweep's trials train at least 1 epoch (with 0, each only measures its untrained encoder), got {fewest}")
    if dist is not None and tune.scheduler != "none":
        raise ConfigError(f"{source}: search.train.epochs: not with tune.scheduler: {tune.scheduler} (its rungs compare trials at equal "
                          f"epochs of one length: search the epochs with tune.scheduler: none, or set base.train.epochs)")


def _check_cohorts(tune: TuneSpec, source: str) -> None:
    """Cohorts are synchronous successive halving's, and each holds at least one trial."""
    if tune.cohorts == 1:
        return
    if tune.scheduler != "sha":
        raise ConfigError(f"{source}: tune.cohorts: {tune.cohorts} cohorts need tune.scheduler: sha (got {tune.scheduler}: "
                          "ASHA decides each trial as it reaches a rung, and without a scheduler nothing is halved)")
    if tune.cohorts > tune.num_samples:
        raise ConfigError(f"{source}: tune.cohorts: {tune.cohorts} cohorts of tune.num_samples {tune.num_samples} trials: at most one cohort per trial")


def _check_criterion(criterion: str, source: str) -> None:
    """``selection.criterion`` is ``auto`` or a registered label-free criterion."""
    known = criterion_keys()
    if criterion == "auto" or criterion in known:
        return
    what = f"{criterion} reads labels; the choice must be label-free" if reads_labels(criterion) else f"unknown criterion {criterion!r}"
    named = [name for name, key in known.items() if key == criterion]
    hint = f"the criterion that reads {criterion} is named {named[0]!r}" if named else f"known: auto, {', '.join(known)}"
    raise ConfigError(f"{source}: selection.criterion: {what} ({hint})")


def sweep_spec_from_dict(data: Any, source: str = "<sweep>", base_dir: Path | None = None) -> SweepSpec:
    """Validates a search space given as data; relative ``base`` paths resolve from ``base_dir``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    for key in data:
        if key not in SWEEP_SECTIONS:
            raise ConfigError(f"{source}: {key}: unknown key (known keys: {', '.join(SWEEP_SECTIONS)})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\"):
        raise ConfigError(f"{source}: name: expected a non-empty name without slashes, got {name!r}")

    base = config_from_dict(*_resolve_base(data.get("base"), source, base_dir or Path(".")))
    # Every trial embeds the same label-free views, those of the base recipe, also when the
    # sweep searches views.*; and workers on other nodes must find the data where the driver
    # does.
    base = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, dataset=absolute_dataset(base.data.dataset)),
        labelfree=dataclasses.replace(base.labelfree, views=base.labelfree.views or base.views),
    )
    # The resolved tree: a searched key inside a mapping (model.backbone_kwargs.depth) then
    # changes one entry of it.
    base_data = config_to_dict(base)
    search = _parse_search(data.get("search"), base_data, source)

    tune = _section(data, TuneSpec, "tune", source)
    regularizers = search["loss.regularizer"].values if "loss.regularizer" in search else [base.loss.regularizer]
    _check_metric(tune, regularizers, source)
    _check_points(tune.points_to_evaluate, search, base_data, source)
    _check_cohorts(tune, source)
    resources = _section(data, ResourcesSpec, "resources", source)
    if resources.gpus_per_worker != "auto" and resources.gpus_per_worker < 0:
        raise ConfigError(f"{source}: resources.gpus_per_worker: expected 'auto' or a number >= 0, got {resources.gpus_per_worker!r}")
    _check_batch_split(search, base, resources.num_workers, source)
    _check_epochs(search, base, tune, source)
    selection = _section(data, SelectionSpec, "selection", source)
    _check_criterion(selection.criterion, source)
    return SweepSpec(
        name=name,
        base=base,
        base_data=FrozenDict(base_data),
        search=FrozenDict(search),
        tune=tune,
        resources=resources,
        tracking=_section(data, TrackingSpec, "tracking", source),
        selection=selection,
        source=source,
    )


def load_sweep_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Reads a search-space YAML. ``overrides`` (``--set``) address the sweep's own sections
    (``tune.num_samples=2``; ``search.loss.lam.high=0.2`` sets one field of a distribution,
    ``search.loss.lam={...}`` a whole one and ``search.loss.lam=null`` drops it) or, for any
    other key, the base config (``train.epochs=1``, or ``base.train.epochs=1``)."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    source = str(path)
    if overrides:
        source = f"{path} (with --set)"
        data = _apply_sweep_overrides(data, parse_overrides(overrides, source), source, path.parent)
    return sweep_spec_from_dict(data, source, base_dir=path.parent)


_DISTRIBUTION_FIELDS = tuple(f.name for f in dataclasses.fields(Distribution))


def _apply_sweep_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any], source: str, base_dir: Path) -> dict[str, Any]:
    """The search space as data with parsed ``--set`` overrides applied (see :func:`load_sweep_spec`)."""
    data = to_plain(data)
    base_level = {}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if section == "search" and rest:
            data["search"] = _override_search(data.get("search"), rest, value, source)
        elif section == "base" and rest:
            base_level[rest] = value
        elif section in SWEEP_SECTIONS:
            data = apply_overrides(data, {key: value}, source)
        else:
            base_level[key] = value
    if base_level:
        base = config_from_dict(*_resolve_base(data.get("base"), source, base_dir))
        data["base"] = apply_overrides(config_to_dict(base), base_level, source)
    return data


def _override_search(search: Any, key: str, value: Any, source: str) -> dict[str, Any]:
    """``search`` with the dotted config ``key`` (or one field of its distribution, as in
    ``loss.lam.high``) set to ``value``; ``null`` drops a searched key."""
    if not isinstance(search, (Mapping, type(None))):
        raise ConfigError(f"{source}: search: expected a mapping of dotted config keys to distributions, got {search!r}")
    search = dict(search or {})
    searched, _, field_name = key.rpartition(".")
    if searched in search and field_name in _DISTRIBUTION_FIELDS and isinstance(search[searched], Mapping):
        search[searched] = {**search[searched], field_name: value}
    elif value is None:
        search.pop(key, None)
    else:
        search[key] = value
    return search


def trial_config(spec: SweepSpec, params: Mapping[str, Any], output_dir: str | None = None) -> Config:
    """The validated config of one trial: the base with the sampled ``params`` set (and its
    ``train.output_dir``, where given)."""
    data = apply_overrides(spec.base_data, params)
    if output_dir is not None:
        data = apply_overrides(data, {"train.output_dir": output_dir})
    return config_from_dict(data, f"{spec.source} (trial {dict(params)})")


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """The resolved search space as plain data; :func:`sweep_spec_from_dict` reads it back."""
    return {
        "name": spec.name,
        "base": config_to_dict(spec.base),
        "search": {k: {f: to_plain(v) for f, v in dataclasses.asdict(d).items() if v is not None} for k, d in spec.search.items()},
        "tune": to_plain(dataclasses.asdict(spec.tune)),
        "resources": dataclasses.asdict(spec.resources),
        # A password in the tracking URI is masked: this goes into files and MLflow.
        "tracking": {**dataclasses.asdict(spec.tracking), "tracking_uri": mask_uri(spec.tracking.tracking_uri) if spec.tracking.tracking_uri else None},
        "selection": dataclasses.asdict(spec.selection),
    }


def absolute_dataset(dataset: str) -> str:
    """``folder:<path>``, and ``hf:<path>[:<config>]`` naming a local path, with the path made
    absolute (workers on other nodes would resolve a relative one against their own working
    directory); anything else unchanged."""
    if dataset.startswith("folder:"):
        return "folder:" + str(Path(dataset[len("folder:") :]).expanduser().resolve())
    if dataset.startswith("hf:"):
        rest = dataset[len("hf:") :]
        name, _, config = rest.rpartition(":")
        for path, tail in ((rest, ""), (name, f":{config}")):
            if path and Path(path).expanduser().exists():
                return f"hf:{Path(path).expanduser().resolve()}{tail}"
    return dataset
