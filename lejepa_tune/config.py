"""The typed, frozen configuration tree of one LeJEPA training run.

Config flows one way: dataclass defaults <- YAML file <- ``--set dotted.key=value``
overrides, validated once by :func:`load_config` / :func:`config_from_dict`. Every error is a
:class:`ConfigError` whose message names the source and the dotted key path, e.g.::

    configs/tiny.yaml: optim.lr: expected a number > 0, got -1.0

The resolved tree is written next to a run's outputs with :func:`save_config`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

__all__ = [
    "ConfigError",
    "CROSS_FIELD_KEYS",
    "FrozenDict",
    "ModelConfig",
    "DataConfig",
    "ViewsConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "LabelFreeConfig",
    "Config",
    "build_dataclass",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "flatten_dict",
    "to_plain",
    "parse_overrides",
    "apply_overrides",
    "read_yaml",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is a one-line message naming file and key."""


class FrozenDict(dict):
    """A read-only ``dict`` (picklable, unlike ``MappingProxyType``) for mapping-valued fields."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("FrozenDict is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _probability(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _scale_range(v: tuple[float, float]) -> bool:
    return len(v) == 2 and 0.0 < v[0] <= v[1] <= 1.0


def _check(predicate: Any, description: str) -> dict[str, Any]:
    """Field metadata: a validity predicate and what it means, used in error messages."""
    return {"check": (predicate, description)}


@dataclass(frozen=True)
class ModelConfig:
    """A timm backbone (``num_classes=0``) plus the BatchNorm MLP projector."""

    backbone: str = "vit_tiny_patch16_224"
    # Passed through to ``timm.create_model``: lets tiny CPU-sized ViTs and ResNets be built.
    backbone_kwargs: Mapping[str, Any] = field(
        default_factory=lambda: FrozenDict(
            img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3
        )
    )
    proj_hidden_dims: tuple[int, ...] = field(default=(512, 512), metadata=_check(lambda v: all(d > 0 for d in v), "positive integers"))
    proj_dim: int = field(default=32, metadata=_check(_positive, "an integer > 0"))


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from: ``digits``, ``hf:<name>[:<config>]`` or ``folder:<path>``."""

    dataset: str = "digits"
    # Images are resized to this size on load (digits: 8x8 upsampled).
    image_size: int = field(default=32, metadata=_check(_positive, "an integer > 0"))
    # ``digits`` only: the fixed, seeded fraction of images held out for validation.
    val_fraction: float = field(default=0.2, metadata=_check(lambda v: 0 < v < 1, "a number in (0, 1)"))
    split_seed: int = 0
    # Hugging Face datasets: column and split names.
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    val_split: str = "validation"
    # Optional caps (e.g. for smoke tests); ``null`` means the whole split.
    max_train_samples: int | None = field(default=None, metadata=_check(lambda v: v is None or v > 0, "null or an integer > 0"))
    max_val_samples: int | None = field(default=None, metadata=_check(lambda v: v is None or v > 0, "null or an integer > 0"))
    # DataLoader processes that decode images (``lejepa-tune train`` with ``in_memory`` false).
    num_workers: int = field(default=0, metadata=_check(_non_negative, "an integer >= 0"))
    # Decode every image once into one uint8 tensor (fast; the default). ``false``, for
    # datasets larger than memory, decodes batches on the fly: streamed by Ray Data in a sweep,
    # in ``num_workers`` DataLoader processes under ``lejepa-tune train``.
    in_memory: bool = True


@dataclass(frozen=True)
class ViewsConfig:
    """Multi-crop views: ``n_global`` crops at ``global_size`` plus ``n_local`` small crops.

    The defaults suit the bundled digits: a flipped or solarised digit is another digit and
    colour means nothing on grayscale. The official recipe for natural images is
    ``global_scale: [0.3, 1.0]``, ``jitter_prob: 0.8``, ``grayscale_prob: 0.2``,
    ``blur_prob: 0.5``, ``solarize_prob: 0.2``, ``hflip_prob: 0.5`` (see
    ``search_spaces/imagenette_vits8.yaml``).
    """

    n_global: int = field(default=2, metadata=_check(_positive, "an integer >= 1"))
    n_local: int = field(default=0, metadata=_check(_non_negative, "an integer >= 0"))
    global_size: int = field(default=32, metadata=_check(_positive, "an integer > 0"))
    local_size: int = field(default=16, metadata=_check(_positive, "an integer > 0"))
    global_scale: tuple[float, float] = field(default=(0.4, 1.0), metadata=_check(_scale_range, "[lo, hi] with 0 < lo <= hi <= 1"))
    local_scale: tuple[float, float] = field(default=(0.05, 0.3), metadata=_check(_scale_range, "[lo, hi] with 0 < lo <= hi <= 1"))
    jitter_prob: float = field(default=0.0, metadata=_check(_probability, "a probability in [0, 1]"))
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    grayscale_prob: float = field(default=0.0, metadata=_check(_probability, "a probability in [0, 1]"))
    blur_prob: float = field(default=0.2, metadata=_check(_probability, "a probability in [0, 1]"))
    solarize_prob: float = field(default=0.0, metadata=_check(_probability, "a probability in [0, 1]"))
    hflip_prob: float = field(default=0.0, metadata=_check(_probability, "a probability in [0, 1]"))
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossConfig:
    """``loss = (1 - lam) * invariance + lam * regularizer``."""

    lam: float = field(default=0.05, metadata=_check(_probability, "a number in [0, 1]"))
    # "sigreg" is LeJEPA's SIGReg; "spectral" is the SVD-based alternative, never the default.
    regularizer: Literal["sigreg", "spectral"] = "sigreg"
    num_slices: int = field(default=256, metadata=_check(_positive, "an integer > 0"))
    num_knots: int = field(default=17, metadata=_check(lambda v: v >= 2, "an integer >= 2"))
    t_max: float = field(default=3.0, metadata=_check(_positive, "a number > 0"))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with two parameter groups (encoder + projector, probe) and a warmup/cosine schedule."""

    lr: float = field(default=2e-3, metadata=_check(_positive, "a number > 0"))
    weight_decay: float = field(default=0.05, metadata=_check(_non_negative, "a number >= 0"))
    probe_lr: float = field(default=1e-2, metadata=_check(_positive, "a number > 0"))
    probe_weight_decay: float = field(default=1e-7, metadata=_check(_non_negative, "a number >= 0"))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = field(default=1.0, metadata=_check(_non_negative, "a number >= 0"))
    # The cosine decays to ``min_lr_ratio * lr``.
    min_lr_ratio: float = field(default=0.01, metadata=_check(_probability, "a number in [0, 1]"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=_check(_non_negative, "an integer >= 0 (0 evaluates the untrained model)"))
    # The *global* batch: split evenly over the DDP processes. SIGReg's N is this number.
    batch_size: int = field(default=64, metadata=_check(lambda v: v >= 2, "an integer >= 2"))
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": bf16 autocast on CUDA, fp32 on CPU (where bf16 is many times slower).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    output_dir: str = "runs/train"
    # A checkpoint directory of an earlier run of this config to continue from (its model,
    # optimiser, step, epoch and random states); ``null`` starts afresh.
    resume_from: str | None = None
    save_checkpoint: bool = True
    # Every how many epochs a checkpoint is written (the last epoch always is).
    checkpoint_every: int = field(default=1, metadata=_check(_positive, "an integer > 0"))


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-feature evaluation at the end of training (labels used only to *measure*)."""

    enabled: bool = True
    knn_k: int = field(default=20, metadata=_check(_positive, "an integer > 0"))
    knn_temperature: float = field(default=0.07, metadata=_check(_positive, "a number > 0"))
    linear_max_iter: int = field(default=1000, metadata=_check(_positive, "an integer > 0"))
    batch_size: int = field(default=256, metadata=_check(_positive, "an integer > 0"))
    # The labelled reference criteria are judged against: a linear probe cross-validated in
    # this many stratified folds over the labelled images of both splits (at most
    # ``reference_max_images`` of them, a seeded subset), so every image is scored once.
    reference_folds: int = field(default=5, metadata=_check(lambda v: v >= 2, "an integer >= 2"))
    reference_max_images: int = field(default=10000, metadata=_check(lambda v: v >= 20, "an integer >= 20"))


@dataclass(frozen=True)
class LabelFreeConfig:
    """The fixed label-free evaluation set, measured every epoch: ``num_images`` training
    images (a subset drawn with ``seed``, labels never read), ``num_views`` views of each made
    with ``seed``, the same for every trial of a sweep. ``views`` is the recipe of those views
    (``null``: this run's own ``views``; a sweep fills it with its base recipe, so that trials
    which search ``views.*`` are still measured on identical pixels). After the last epoch the
    objective is also measured on ``resamples`` resamples of the images, drawn with ``seed``
    (the same in every trial, so that two trials' values pair up; 0: none), which tell whether
    the images separate the choice from the trials just behind it."""

    num_images: int = field(default=256, metadata=_check(lambda v: v >= 8, "an integer >= 8"))
    num_views: int = field(default=2, metadata=_check(lambda v: v >= 2, "an integer >= 2"))
    seed: int = 0
    views: ViewsConfig | None = None
    resamples: int = field(default=200, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    # The exponent of the paper's λ-corrected loss ``train/scaled_loss = loss / λ^alpha``.
    alpha: float = field(default=0.4, metadata=_check(_non_negative, "a number >= 0"))


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    labelfree: LabelFreeConfig = field(default_factory=LabelFreeConfig)


# ----------------------------------------------------------------------------------------------
# Building a dataclass tree from plain data, with key paths in every error.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, source: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and converts it (lists to tuples...)."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {path}: expected {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail(f"a mapping of {tp.__name__} keys")
        return build_dataclass(tp, value, path, source)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail(f"one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail(_type_name(tp))
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # Optional[X]: X's own error, with its key path
            return _convert(value, others[0], path, source)
        for arg in others:
            try:
                return _convert(value, arg, path, source)
            except ConfigError:
                continue
        raise fail(_type_name(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} items")
        return tuple(_convert(v, a, f"{path}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (collections.abc.Mapping, dict) or tp in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return FrozenDict({str(k): _freeze(v) for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        if not math.isfinite(value):  # YAML reads 1e400 as inf, and .nan as nan
            raise fail("a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if tp is Any:
        return _freeze(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")  # a bug in this module


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    """Builds the (frozen) dataclass ``cls`` from ``data``, checking keys, types and values;
    errors name ``source`` and the key path below ``prefix``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            known = ", ".join(fields)
            raise ConfigError(f"{source}: {path}: unknown key (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}.{name}" if prefix else name
        value = _convert(data[name], hints[name], path, source)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(f"{source}: {path}: expected {check[1]}, got {data[name]!r}")
        kwargs[name] = value
    return cls(**kwargs)


# The keys :func:`_validate_cross_field` relates: a sweep that searches several of them checks
# every combination of their extreme values.
CROSS_FIELD_KEYS = ("views.n_global", "views.n_local", "views.local_size", "views.global_size", "loss.regularizer", "model.proj_dim")


def _validate_cross_field(cfg: Config, source: str, prefix: str = "") -> None:
    """Constraints that involve more than one key."""
    if cfg.views.n_global + cfg.views.n_local < 2:
        raise ConfigError(
            f"{source}: {prefix}views.n_global: the invariance term compares the views of an image, so it needs at least two "
            f"(views.n_global {cfg.views.n_global} + views.n_local {cfg.views.n_local})"
        )
    if cfg.views.n_local > 0 and cfg.views.local_size > cfg.views.global_size:
        raise ConfigError(
            f"{source}: {prefix}views.local_size: must not exceed views.global_size "
            f"({cfg.views.local_size} > {cfg.views.global_size})"
        )
    if cfg.loss.regularizer == "spectral" and cfg.model.proj_dim < 2:
        raise ConfigError(f"{source}: {prefix}model.proj_dim: the spectral regularizer needs proj_dim >= 2")


def config_from_dict(data: Mapping[str, Any] | None, source: str = "<config>", prefix: str = "") -> Config:
    """Builds and validates a :class:`Config` from plain (YAML-like) data; errors name
    ``source`` and the key path below ``prefix`` (``base`` for a sweep's inline base)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = f"{prefix}: expected a mapping" if prefix else "expected a mapping at the top level"
        raise ConfigError(f"{source}: {where}, got {type(data).__name__}")
    cfg = build_dataclass(Config, data, prefix, source)
    _validate_cross_field(cfg, source, f"{prefix}." if prefix else "")
    return cfg


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` and ``1e30`` as floats (YAML 1.1 wants ``1.0e-3``,
    so PyYAML would hand back the *string* "1e-3" for a learning rate)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> Any:
    """Reads a YAML file; a missing, unreadable or binary file or a syntax error is a one-line
    ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return _yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def parse_overrides(overrides: list[str] | tuple[str, ...], source: str = "--set") -> dict[str, Any]:
    """``["optim.lr=1e-3", "views.n_local=2"]`` -> ``{"optim.lr": 0.001, "views.n_local": 2}``.

    Values are parsed as YAML scalars/flow collections, so ``[0.3, 1.0]`` is a list. Errors
    name ``source`` (the file the overrides apply to) and the key.
    """
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: {key or '--set'}: expected dotted.key=value, got {item!r}")
        try:
            parsed[key] = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {key}: value is not valid YAML: {raw!r}") from None
    return parsed


def apply_overrides(data: Mapping[str, Any] | None, overrides: Mapping[str, Any], source: str = "--set") -> dict[str, Any]:
    """Returns a deep copy of ``data`` with each dotted key of ``overrides`` set."""
    result = to_plain(data or {})
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])}: is not a section, cannot set {dotted}")
            node = child
        node[parts[-1]] = to_plain(value)
    return result


def to_plain(value: Any) -> Any:
    """Deep copy as plain data: mappings to dicts, tuples to lists (YAML- and JSON-safe)."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (optional) <- ``--set`` overrides, validated once."""
    source = str(path) if path is not None else "<defaults>"
    data = read_yaml(path) if path is not None else {}
    cfg = config_from_dict(data, source)
    if overrides:
        # Overrides act on the resolved tree, so `--set model.backbone_kwargs.depth=2` changes
        # one keyword of the mapping the YAML (or the defaults) gave, not the whole mapping.
        source = f"{source} (with --set)"
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), parse_overrides(overrides, source), source), source)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain YAML-safe data (tuples become lists)."""
    return to_plain(dataclasses.asdict(cfg))


def flatten_dict(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, dotted))
        else:
            flat[dotted] = value
    return flat


def save_config(cfg: Config, path: str | Path) -> Path:
    """Writes the resolved config as YAML (``load_config`` reads it back to an equal config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
