"""The fixed label-free evaluation set, and the criteria measured on it every epoch.

Raw training losses do not compare across trials that differ in batch size or views: SIGReg's
statistic is ``N`` times a distance, and the invariance term depends on the views. The
label-free set measures every trial the same way instead: the same ``M`` unlabelled training
images (a subset drawn with ``labelfree.seed``), the same ``q`` views of each (one recipe, with
parameters drawn from the same seed), so every trial of a sweep embeds identical pixels,
whatever its own batch size, views or projector. The features of those ``(M, q)`` views, on the
backbone and on the projector, give the criteria of :func:`lejepa_tune.evaluate.labelfree_criteria`
and the declared objective (:data:`lejepa_tune.metrics.OBJECTIVE`).

Under DDP every rank embeds its share of the images and the features are gathered, so no rank
waits on another for long.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .config import LabelFreeConfig, ViewsConfig
from .data import TensorImages
from .distributed import all_gather_rows, shard
from .evaluate import extract_features, labelfree_criteria
from .metrics import FEATURE_SPACES, OBJECTIVE, OBJECTIVE_SOURCE, labelfree_key, objective
from .models import LeJEPAModel
from .views import Augment, concat, select

__all__ = ["LabelFreeSet", "embed_views", "criteria", "measure", "objective_of", "resampled_objective"]


class LabelFreeSet:
    """``num_images`` images of ``train`` and the parameters of ``num_views`` views of each,
    all drawn from ``cfg.seed``: the same for every run that shares the images and the config.

    ``views`` is the recipe (its global crops are used; ``cfg.views`` overrides it).
    """

    def __init__(self, train: Dataset, cfg: LabelFreeConfig, views: ViewsConfig):
        if cfg.num_images > len(train):
            raise ValueError(f"labelfree.num_images: {cfg.num_images} exceeds the {len(train)} training images")
        recipe = cfg.views or views
        gen = torch.Generator().manual_seed(cfg.seed)
        index = torch.randperm(len(train), generator=gen)[: cfg.num_images]
        if isinstance(train, TensorImages):
            self.images = train.images[index]  # (M, 3, H, W) uint8
        else:  # decode only the chosen images
            self.images = torch.stack([train[int(i)][0] for i in index])
        self.num_views = cfg.num_views
        self.augment = Augment(
            recipe.global_size,
            recipe.global_scale,
            recipe.jitter_prob,
            recipe.jitter_strength,
            recipe.grayscale_prob,
            recipe.blur_prob,
            recipe.solarize_prob,
            recipe.hflip_prob,
            recipe.mean,
            recipe.std,
        )
        m, _, h, w = self.images.shape
        flat = self.augment.sample(m * cfg.num_views, h, w, gen)  # row i * q + v: view v of image i
        self.params = [select(flat, torch.arange(i * cfg.num_views, (i + 1) * cfg.num_views)) for i in range(m)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def views(self, rows: list[int], device: torch.device) -> Tensor:
        """The views of images ``rows``: ``(len(rows) * q, 3, G, G)``, image-major."""
        images = self.images[rows].to(device)
        params = concat([self.params[r] for r in rows])
        index = torch.arange(len(rows)).repeat_interleave(self.num_views)
        return self.augment.apply(images, params, index)


@torch.no_grad()
def embed_views(model: LeJEPAModel, lfset: LabelFreeSet, device: torch.device, amp: torch.dtype | None, batch_size: int = 256) -> dict[str, Tensor]:
    """The features of the set's views, ``{"backbone": (M, q, D), "embed": (M, q, K)}`` on the
    CPU, on every rank (each rank embeds its share). The model is put in eval mode and restored."""
    rows = list(shard(len(lfset)))
    per_batch = max(1, batch_size // lfset.num_views)
    chunks = [rows[i : i + per_batch] for i in range(0, len(rows), per_batch)]
    q = lfset.num_views
    if rows:
        backbone = extract_features(model.backbone, (lfset.views(c, device) for c in chunks), device, amp)
        embed = extract_features(model.projector, backbone.split(batch_size), device, amp)
    else:  # more ranks than images
        backbone = torch.empty(0, model.embed_dim)
        embed = torch.empty(0, model.projector.out_dim)
    return {
        "backbone": all_gather_rows(backbone.view(-1, q, backbone.shape[-1]), len(lfset)),
        "embed": all_gather_rows(embed.view(-1, q, embed.shape[-1]), len(lfset)),
    }


def criteria(features: dict[str, Tensor]) -> dict[str, float]:
    """``labelfree/<space>/<criterion>`` of :func:`embed_views`'s features, and the objective."""
    out = {labelfree_key(space, name): value for space in FEATURE_SPACES for name, value in labelfree_criteria(features[space]).items()}
    out[OBJECTIVE] = objective(out)
    return {k: (v if math.isfinite(v) else math.nan) for k, v in out.items()}


def measure(model: LeJEPAModel, lfset: LabelFreeSet, device: torch.device, amp: torch.dtype | None, batch_size: int = 256) -> dict[str, float]:
    """The label-free criteria and the objective of ``model`` on the set."""
    return criteria(embed_views(model, lfset, device, amp, batch_size))


def objective_of(features: dict[str, Tensor]) -> float:
    """The declared objective of :func:`embed_views`'s features, alone: what
    ``criteria(features)[OBJECTIVE]`` is, without the other criteria (a test holds them equal)."""
    space, name = OBJECTIVE_SOURCE
    value = labelfree_criteria(features[space], (name,))[name]
    return value if math.isfinite(value) else math.nan


def resampled_objective(features: dict[str, Tensor], n: int, seed: int) -> np.ndarray:
    """The objective on ``n`` resamples of the set's images (``M`` drawn with replacement, each
    with its views), drawn from ``seed``: two runs on the same set with the same seed draw the
    same resamples, so their values pair up resample by resample. How often one run's value is
    above another's says whether the images separate the two, which a single value cannot."""
    space = OBJECTIVE_SOURCE[0]
    m = features[space].shape[0]
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randint(0, m, (m,), generator=gen) for _ in range(n)]
    return np.array([objective_of({space: features[space][rows]}) for rows in draws])
