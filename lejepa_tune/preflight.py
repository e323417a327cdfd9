"""The checks that need the data or timm, made before anything starts (no Ray, no training):
the backbone is a timm model that takes the views' sizes, the dataset exists, and the batch and
the label-free set fit in its training images. ``lejepa-tune validate`` and ``run`` make them
for every trial a sweep can run, ``lejepa-tune train`` for its one config; every error is a
one-line ConfigError naming the file and the key.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import Config, ConfigError, DataConfig
from .data import DataSplits, build_datasets
from .models import create_backbone, known_backbone
from .search_space import SweepSpec, corners, trial_config

__all__ = ["check_trainable", "check_sweep", "labelfree_width_note", "searcher_note", "sweep_width_note"]

# The searched keys (besides data.* and model.backbone_kwargs.*) whose values check_trainable
# looks at.
_TRAINABLE_KEYS = ("model.backbone", "train.batch_size", "labelfree.num_images", "views.global_size", "views.local_size", "views.n_local")
# The searched keys (besides model.backbone_kwargs.*) that set the backbone's width or the
# label-free set's size.
_WIDTH_KEYS = ("model.backbone", "labelfree.num_images", "labelfree.num_views")


def check_trainable(cfg: Config, built: dict[DataConfig, DataSplits] | None = None) -> DataSplits:
    """Checks ``cfg`` against timm and its data and returns its (lazy) splits; ``built`` caches
    splits by data config. Errors read ``key: what is wrong``: the caller names the file."""
    if not known_backbone(cfg.model.backbone):
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} is not a timm model (see timm.list_models())")
    _check_view_sizes(cfg)
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


def _check_view_sizes(cfg: Config) -> None:
    """The backbone takes the global views' size, and the local views' when there are any: built
    on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic) and given two views of
    each size, in eval mode. A ViT is built for one ``img_size`` and refuses any other (timm
    asserts it) unless built with ``dynamic_img_size``; a CNN refuses views smaller than its
    kernels."""
    import torch

    try:
        with torch.device("meta"):
            backbone = create_backbone(cfg.model.backbone, cfg.model.backbone_kwargs)
    except ValueError as err:  # an unknown model or a keyword it does not take, named by its key
        raise ConfigError(str(err)) from None
    except Exception:  # a model that cannot be built without memory: the run will tell
        return
    backbone.eval()  # batch norm with running statistics: two views are enough
    sizes = [("views.global_size", cfg.views.global_size)] + ([("views.local_size", cfg.views.local_size)] if cfg.views.n_local > 0 else [])
    for key, size in sizes:
        try:
            backbone(torch.empty(2, 3, size, size, device="meta"))
        except NotImplementedError:  # an operation PyTorch cannot run on shapes alone
            return
        except (AssertionError, RuntimeError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "meta" in reason:  # the same: data the meta device does not have
                return
            hint = ("; built with model.backbone_kwargs.dynamic_img_size: true, it takes other sizes"
                    if getattr(backbone, "dynamic_img_size", None) is False else "")
            raise ConfigError(f"{key}: {cfg.model.backbone} does not take {size}x{size} views ({reason}){hint}") from None


def labelfree_width_note(cfg: Config) -> str | None:
    """A warning where the label-free set is small for the backbone's feature width ``D``: the
    objective whitens by the within-image covariance of its views, estimated from
    ``labelfree.num_images · (labelfree.num_views − 1)`` samples. Below ``D`` that covariance is
    singular and the objective is set by the ridge; below ``2·D`` its estimate is biased upwards,
    most by directions that carry only view noise (``experiments/objective_bias.py`` measures
    it). ``None`` where there are enough, or where the backbone cannot be built on the meta
    device."""
    short = _labelfree_shortfall(cfg)
    if short is None:
        return None
    width, samples, needed = short
    lf = cfg.labelfree
    return (f"labelfree.num_images: {lf.num_images} images with {lf.num_views} views give {samples} within-image samples for the "
            f"{width} features of {cfg.model.backbone}, fewer than twice as many: the objective is biased upwards (most by directions "
            f"of pure view noise{'; at this size its within-image covariance is singular' if samples <= width else ''}); set labelfree.num_images to at least {needed}")


def sweep_width_note(spec: SweepSpec) -> str | None:
    """:func:`labelfree_width_note` for every trial ``spec`` can run: at every combination of the
    extreme values of the searched keys that set the backbone's width or the label-free set's
    size, the note of the trials that need the most images, with the searched values behind it.
    A sweep that searches the width is warned of its widest trials, not only of its base."""
    keys = [k for k in spec.search if k in _WIDTH_KEYS or k.startswith("model.backbone_kwargs.")]
    worst: tuple[int, Config, dict[str, Any]] | None = None
    for params in corners(spec.search, keys):
        cfg = trial_config(spec, params)
        short = _labelfree_shortfall(cfg)
        if short is not None and (worst is None or short[2] > worst[0]):
            worst = (short[2], cfg, params)
    if worst is None:
        return None
    _, cfg, params = worst
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return labelfree_width_note(cfg) + (f" (in trials with {shown})" if shown else "")


def searcher_note(spec: SweepSpec) -> str | None:
    """Where TPE can learn nothing: under synchronous successive halving in one cohort, every
    trial waits at the first rung until all ``num_samples`` have reached it, so no trial ends
    before the last one is proposed, and TPE (which learns from ended trials) proposes them all
    as its random start-up draws."""
    tune = spec.tune
    if (tune.scheduler != "sha" or tune.cohorts > 1 or tune.searcher != "tpe" or not spec.search or tune.num_samples < 2
            or not tune.asha_rungs(spec.base.train.epochs)):
        return None
    return (f"tune.searcher: tpe with tune.scheduler: sha: no trial ends before all {tune.num_samples} are proposed, so TPE proposes "
            "them as random search would (its start-up draws); with tune.cohorts: 2 or more, TPE proposes each later cohort from "
            "the trials the earlier ones stopped")


def _labelfree_shortfall(cfg: Config) -> tuple[int, int, int] | None:
    """``(width, samples, images needed)`` where the label-free set gives fewer within-image
    samples than twice the backbone's width; ``None`` where it does not, or where the backbone
    cannot be built on the meta device."""
    import torch

    try:
        with torch.device("meta"):
            width = create_backbone(cfg.model.backbone, cfg.model.backbone_kwargs).num_features
    except Exception:  # the other checks name what is wrong with the backbone
        return None
    lf = cfg.labelfree
    samples = lf.num_images * (lf.num_views - 1)
    if not isinstance(width, int) or samples >= 2 * width:
        return None
    return width, samples, -(-2 * width // (lf.num_views - 1))


def check_sweep(spec: SweepSpec) -> None:
    """:func:`check_trainable` for every trial ``spec`` can run: at every combination of the
    extreme values of the searched keys it looks at (a searched data.* changes the data)."""
    keys = [k for k in spec.search if k in _TRAINABLE_KEYS or k.startswith(("data.", "model.backbone_kwargs."))]
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
