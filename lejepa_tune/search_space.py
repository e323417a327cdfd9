"""Search-space YAML -> a validated :class:`SweepSpec` (and Optuna distributions).

A search space names a sweep, its base training config (inline, or a path relative to the
YAML file), the distributions of dotted config keys, and how Tune, Ray resources, MLflow and
label-free selection are set up::

    name: lambda_sweep
    base: {train: {epochs: 8}}          # or: base: ../configs/tiny.yaml
    search:
      loss.lam: {type: loguniform, low: 0.005, high: 0.5}
      views.n_global: {type: choice, values: [2, 4]}
    tune: {num_samples: 8, metric: labelfree/objective, mode: max, seed: 0, scheduler: none}
    resources: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: auto}
    tracking: {experiment: null, tracking_uri: null}
    selection: {criterion: auto}

Every error is a one-line :class:`~lejepa_tune.config.ConfigError` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import optuna

from .config import (
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
from .metrics import OBJECTIVE, OBJECTIVE_MODE, label_free_modes, reads_labels

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


@dataclass(frozen=True)
class TuneSpec:
    num_samples: int = field(default=8, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    # The label-free metric Optuna's TPE and ASHA optimise; by default the declared objective,
    # the one the final choice uses too. Labels never choose: a metric that reads labels is
    # refused.
    metric: str = OBJECTIVE
    mode: Literal["min", "max"] = OBJECTIVE_MODE
    seed: int = 0
    scheduler: Literal["none", "asha"] = "none"
    # ASHA: the minimum number of epochs before a trial may be stopped, and the halving rate.
    grace_period: int = field(default=1, metadata={"check": (lambda v: v > 0, "an integer > 0")})
    reduction_factor: float = field(default=2.0, metadata={"check": (lambda v: v > 1, "a number > 1")})
    # Points evaluated first, e.g. the paper's defaults: [{loss.lam: 0.05, optim.lr: 0.002}].
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()
    # null: as many trials as the cluster's CPUs (or GPUs) can hold at once.
    max_concurrent_trials: int | None = field(default=None, metadata={"check": (lambda v: v is None or v > 0, "null or an integer > 0")})
    # How often Ray Train restarts a trial's workers after a failure (from its last checkpoint).
    max_failures: int = field(default=2, metadata={"check": (lambda v: v >= 0, "an integer >= 0")})


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
            raise ConfigError(f"{where}.{bound}: expected a number, got {v!r}")
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


def _resolve_base(raw: Any, source: str, base_dir: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        path = (base_dir / raw) if not Path(raw).is_absolute() else Path(raw)
        data = read_yaml(path)
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return apply_overrides(data or {}, {})
    if isinstance(raw, Mapping):
        return apply_overrides(raw, {})
    raise ConfigError(f"{source}: base: expected a mapping or the path of a config file, got {raw!r}")


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

    base_data = _resolve_base(data.get("base"), source, base_dir or Path("."))
    base = config_from_dict(base_data, f"{source} (base)")
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

    raw_search = data.get("search") or {}
    if not isinstance(raw_search, Mapping):
        raise ConfigError(f"{source}: search: expected a mapping of dotted config keys to distributions")
    search: dict[str, Distribution] = {}
    for key, raw in raw_search.items():
        dist = _parse_distribution(str(key), raw, source)
        # Every value at the edges of the range must give a valid config: this catches
        # unknown keys (search.optim.lrr) and impossible values (loss.lam up to 1.5) early.
        for value in dist.extremes():
            try:
                config_from_dict(apply_overrides(base_data, {key: value}), "")
            except ConfigError as err:
                detail = str(err).split(": ", 1)[-1]
                raise ConfigError(f"{source}: search.{key}: {value!r} is not a valid value here ({detail})") from None
        search[str(key)] = dist

    def section(cls: type, name: str) -> Any:
        raw = data.get(name) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: {name}: expected a mapping, got {raw!r}")
        return build_dataclass(cls, raw, name, source)

    tune = section(TuneSpec, "tune")
    modes = label_free_modes(base.loss.regularizer)
    if reads_labels(tune.metric):
        raise ConfigError(f"{source}: tune.metric: {tune.metric} reads labels; the search must be label-free (e.g. {OBJECTIVE})")
    if tune.metric not in modes:
        raise ConfigError(f"{source}: tune.metric: unknown label-free metric {tune.metric!r} (known: {', '.join(modes)})")
    if tune.mode != modes[tune.metric]:
        raise ConfigError(f"{source}: tune.mode: {tune.metric} is better when {'lower' if modes[tune.metric] == 'min' else 'higher'}; expected {modes[tune.metric]}, got {tune.mode}")
    for i, point in enumerate(tune.points_to_evaluate):
        for key in point:
            if key not in search:
                raise ConfigError(f"{source}: tune.points_to_evaluate[{i}].{key}: not a searched key (searched: {', '.join(search) or 'none'})")
        try:
            config_from_dict(apply_overrides(base_data, point), "")
        except ConfigError as err:
            raise ConfigError(f"{source}: tune.points_to_evaluate[{i}]: {str(err).split(': ', 1)[-1]}") from None
    resources = section(ResourcesSpec, "resources")
    if resources.gpus_per_worker != "auto" and resources.gpus_per_worker < 0:
        raise ConfigError(f"{source}: resources.gpus_per_worker: expected 'auto' or a number >= 0")
    return SweepSpec(
        name=name,
        base=base,
        base_data=FrozenDict(base_data),
        search=FrozenDict(search),
        tune=tune,
        resources=resources,
        tracking=section(TrackingSpec, "tracking"),
        selection=section(SelectionSpec, "selection"),
        source=source,
    )


def load_sweep_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Reads a search-space YAML. ``overrides`` (``--set``) address the sweep's own sections
    (``tune.num_samples=2``) or, for any other key, the base config (``train.epochs=1``)."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    source = str(path)
    if overrides:
        sweep_level, base_level = {}, {}
        for key, value in parse_overrides(overrides).items():
            (sweep_level if key.split(".")[0] in SWEEP_SECTIONS else base_level)[key] = value
        data = apply_overrides(data, sweep_level)
        if base_level:
            base = config_from_dict(_resolve_base(data.get("base"), source, path.parent), f"{source} (base)")
            data["base"] = apply_overrides(config_to_dict(base), base_level)
        source = f"{path} (with --set)"
    return sweep_spec_from_dict(data, source, base_dir=path.parent)


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
        "tracking": dataclasses.asdict(spec.tracking),
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
