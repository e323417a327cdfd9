"""Multi-crop views for LeJEPA training and the deterministic transform for evaluation.

Each training image gives ``n_global`` crops at ``global_size`` (RandomResizedCrop with scale
``global_scale``) plus ``n_local`` small crops at ``local_size`` (scale ``local_scale``), each
independently augmented with the official LeJEPA recipe: colour jitter, grayscale, Gaussian
blur, solarisation, horizontal flip, then normalisation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lejepa_tune.config import ViewsConfig

__all__ = ["MultiCropViews", "build_views", "eval_transform", "ViewDataset", "EvalDataset"]


def _blur_kernel(size: int) -> int:
    """An odd Gaussian-blur kernel of about a tenth of the crop (23 at 224), at least 3."""
    k = max(3, round(size / 10))
    return k if k % 2 == 1 else k + 1


def _augmentation(
    size: int,
    scale: tuple[float, float],
    jitter_prob: float,
    jitter_strength: Sequence[float],
    grayscale_prob: float,
    blur_prob: float,
    solarize_prob: float,
    hflip_prob: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """PIL image -> float tensor ``(3, size, size)``: one randomly cropped, augmented view."""
    brightness, contrast, saturation, hue = jitter_strength
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=tuple(scale)),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_prob),
            v2.RandomGrayscale(p=grayscale_prob),
            v2.RandomApply([v2.GaussianBlur(kernel_size=_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_prob),
            # Still a PIL image here (0..255), so 128 is the middle of the range.
            v2.RandomSolarize(threshold=128, p=solarize_prob),
            v2.RandomHorizontalFlip(p=hflip_prob),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class MultiCropViews:
    """PIL image -> ``(globals (n_global, 3, G, G), locals (n_local, 3, L, L))`` float tensors.

    Every view is drawn independently; ``locals`` has shape ``(0, 3, L, L)`` when ``n_local``
    is 0, so batches always collate the same way.
    """

    def __init__(
        self,
        n_global: int,
        n_local: int,
        global_size: int,
        local_size: int,
        global_scale: tuple[float, float],
        local_scale: tuple[float, float],
        jitter_prob: float,
        jitter_strength: tuple[float, float, float, float],
        grayscale_prob: float,
        blur_prob: float,
        solarize_prob: float,
        hflip_prob: float,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ):
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        if len(jitter_strength) != 4:
            raise ValueError(f"jitter_strength is (brightness, contrast, saturation, hue), got {jitter_strength}")
        self.n_global = n_global
        self.n_local = n_local
        self.global_size = global_size
        self.local_size = local_size
        shared = dict(
            jitter_prob=jitter_prob,
            jitter_strength=jitter_strength,
            grayscale_prob=grayscale_prob,
            blur_prob=blur_prob,
            solarize_prob=solarize_prob,
            hflip_prob=hflip_prob,
            mean=mean,
            std=std,
        )
        self.global_transform = _augmentation(global_size, global_scale, **shared)
        self.local_transform = _augmentation(local_size, local_scale, **shared)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        globals_ = torch.stack([self.global_transform(image) for _ in range(self.n_global)])
        if self.n_local == 0:
            locals_ = torch.empty(0, 3, self.local_size, self.local_size)
        else:
            locals_ = torch.stack([self.local_transform(image) for _ in range(self.n_local)])
        return globals_, locals_

    def __repr__(self) -> str:
        return (
            f"MultiCropViews(n_global={self.n_global}, n_local={self.n_local}, "
            f"global_size={self.global_size}, local_size={self.local_size})"
        )


def build_views(cfg: ViewsConfig) -> MultiCropViews:
    """The :class:`MultiCropViews` described by the ``views`` section of the config."""
    return MultiCropViews(
        n_global=cfg.n_global,
        n_local=cfg.n_local,
        global_size=cfg.global_size,
        local_size=cfg.local_size,
        global_scale=cfg.global_scale,
        local_scale=cfg.local_scale,
        jitter_prob=cfg.jitter_prob,
        jitter_strength=cfg.jitter_strength,
        grayscale_prob=cfg.grayscale_prob,
        blur_prob=cfg.blur_prob,
        solarize_prob=cfg.solarize_prob,
        hflip_prob=cfg.hflip_prob,
        mean=cfg.mean,
        std=cfg.std,
    )


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Deterministic PIL image -> float tensor ``(3, size, size)``: resize, centre crop, normalise."""
    return v2.Compose(
        [
            v2.Resize(size),  # the shorter side
            v2.CenterCrop(size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ViewDataset(Dataset):
    """``(PIL, label)`` items -> ``(globals (Vg, 3, G, G), locals (Vl, 3, L, L), label)``.

    The default collate stacks these into ``(B, Vg, 3, G, G)``, ``(B, Vl, 3, L, L)``, ``(B,)``.
    """

    def __init__(self, base: Dataset, views: MultiCropViews):
        self.base = base
        self.views = views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, label = self.base[index]
        globals_, locals_ = self.views(image)
        return globals_, locals_, label


class EvalDataset(Dataset):
    """``(PIL, label)`` items -> ``(tensor (3, S, S), label)`` through a deterministic transform."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], torch.Tensor]):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label
