"""The checks that need the data or timm, made before anything starts (no Ray, no training):
the backbone is a timm model, the dataset exists, and the batch and the label-free set fit in
its training images. ``lejepa-tune validate`` and ``run`` make them for every trial a sweep can
run, ``lejepa-tune train`` for its one config; every error is a one-line ConfigError naming
the file and the key.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import Config, ConfigError, DataConfig
from .data import DataSplits, build_datasets
from .models import known_backbone
from .search_space import SweepSpec, corners, trial_config

__all__ = ["check_trainable", "check_sweep"]

# The searched keys (besides data.*) whose values check_trainable looks at.
_TRAINABLE_KEYS = ("model.backbone", "train.batch_size", "labelfree.num_images")


def check_trainable(cfg: Config, built: dict[DataConfig, DataSplits] | None = None) -> DataSplits:
    """Checks ``cfg`` against timm and its data and returns its (lazy) splits; ``built`` caches
    splits by data config. Errors read ``key: what is wrong``: the caller names the file."""
    if not known_backbone(cfg.model.backbone):
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} is not a timm model (see timm.list_models())")
    built = {} if built is None else built
    if cfg.data not in built:
        built[cfg.data] = build_datasets(cfg.data)  # a DatasetError reads "data.<key>: ..."
    splits = built[cfg.data]
    n = len(splits.train)
    capped = f" (data.max_train_samples: {cfg.data.max_train_samples})" if cfg.data.max_train_samples is not None else ""
    for key, wanted in (("train.batch_size", cfg.train.batch_size), ("labelfree.num_images", cfg.labelfree.num_images)):
        if wanted > n:
            raise ConfigError(f"{key}: {wanted} exceeds the {n} training images of {cfg.data.dataset!r}{capped}")
    return splits


def check_sweep(spec: SweepSpec) -> None:
    """:func:`check_trainable` for every trial ``spec`` can run: at every combination of the
    extreme values of the searched keys it looks at (a searched data.* changes the data)."""
    keys = [k for k in spec.search if k in _TRAINABLE_KEYS or k.startswith("data.")]
    built: dict[DataConfig, DataSplits] = {}
    for params in corners(spec.search, keys):
        try:
            check_trainable(trial_config(spec, params), built)
        except ConfigError as err:
            key, _, detail = str(err).partition(": ")
            where = f"search.{key}" if key in spec.search else f"base.{key}"
            raise ConfigError(f"{spec.source}: {where}: {detail}{_in_trials(params, key, detail)}") from None


def _in_trials(params: Mapping[str, Any], key: str, detail: str) -> str:
    """`` (in trials with data.image_size=16)``: the searched data keys behind an error about
    another key, unless the message names them already."""
    shown = [f"{k}={v!r}" for k, v in params.items() if k.startswith("data.") and k != key and k not in detail]
    return f" (in trials with {', '.join(shown)})" if shown else ""
