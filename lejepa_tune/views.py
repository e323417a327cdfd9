"""Batched multi-crop views: the whole batch is augmented at once, as tensor operations, on the
training device (the GPU when there is one).

Images arrive as a ``uint8`` batch ``(B, 3, H, W)``. Each view of each image gets its own
random parameters, drawn on the CPU from a ``torch.Generator`` (so a seed gives the same views
on any device) with the distributions of torchvision's per-image transforms:

* ``RandomResizedCrop(size, scale, ratio=(3/4, 4/3))``: area fraction uniform in ``scale``,
  log aspect ratio uniform, ten tries to fit, else the centre crop of the clamped ratio;
  the crop is resampled by ``roi_align`` (bilinear, averaging several samples per output pixel
  when it shrinks, as an antialiased resize does);
* ``ColorJitter`` (with probability ``jitter_prob``): brightness, contrast and saturation
  factors uniform in ``[1 - s, 1 + s]``, hue shift uniform in ``[-h, h]``, applied in a random
  order per view;
* ``RandomGrayscale``, ``GaussianBlur`` (sigma uniform in ``[0.1, 2]``, a kernel of about a tenth
  of the crop, reflect padding), ``RandomSolarize`` (threshold 128 of 255),
  ``RandomHorizontalFlip``, then normalisation.

The order is the official LeJEPA recipe's: crop, jitter, grayscale, blur, solarize, flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from .config import ViewsConfig

__all__ = ["ViewParams", "Augment", "MultiViews", "build_views", "select", "concat", "to_unit_float", "eval_views"]

_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_SOLARIZE_THRESHOLD = 128.0 / 255.0
_SIGMA = (0.1, 2.0)


def blur_kernel_size(size: int) -> int:
    """An odd Gaussian-blur kernel of about a tenth of the crop (23 at 224), at least 3."""
    k = max(3, round(size / 10))
    return k if k % 2 == 1 else k + 1


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of ``n`` views; every field has ``n`` rows.

    ``boxes (n, 4)``: crop ``x0, y0, x1, y1`` in pixels (continuous coordinates, pixel ``i``
    spans ``[i, i + 1)``); ``jitter (n,)`` whether colour jitter applies, with ``factors (n, 4)``
    (brightness, contrast, saturation, hue) and ``order (n, 4)`` (a permutation of the four);
    ``gray``, ``blur``, ``solarize``, ``flip`` ``(n,)`` booleans; ``sigma (n,)`` the blur's.
    """

    boxes: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor
    flip: Tensor

    def flags(self) -> Tensor:
        """``gray``, ``blur``, ``solarize`` and ``flip`` as the columns of one float ``(n, 4)``."""
        return torch.stack([self.gray, self.blur, self.solarize, self.flip], dim=1).float()


def _crop_boxes(n: int, height: int, width: int, scale: Sequence[float], gen: torch.Generator) -> Tensor:
    """``(n, 4)`` boxes drawn as ``RandomResizedCrop.get_params`` draws them, ``n`` at a time."""
    area = height * width
    tries = 10
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=gen)  # (n, 10)
    log_ratio = torch.empty(n, tries).uniform_(math.log(_RATIO[0]), math.log(_RATIO[1]), generator=gen)
    ratio = log_ratio.exp()
    w = (target * ratio).sqrt().round()
    h = (target / ratio).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)  # (n, 10)
    # torchvision draws the offset only for the try that fits; drawing one per try and keeping
    # the chosen one's gives the same distribution (uniform over the valid offsets).
    u_i = torch.rand(n, tries, generator=gen)
    u_j = torch.rand(n, tries, generator=gen)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(n, dtype=torch.long))
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731 - a local shorthand
    w, h = pick(w), pick(h)
    i = (pick(u_i) * (height - h + 1)).floor()
    j = (pick(u_j) * (width - w + 1)).floor()
    # No try fits: the centre crop of the whole image with the ratio clamped to the range.
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        fw, fh = width, round(width / _RATIO[0])
    elif in_ratio > _RATIO[1]:
        fh, fw = height, round(height * _RATIO[1])
    else:
        fw, fh = width, height
    none = ~fits.any(1)
    w = torch.where(none, torch.tensor(float(fw)), w)
    h = torch.where(none, torch.tensor(float(fh)), h)
    i = torch.where(none, torch.tensor(float((height - fh) // 2)), i)
    j = torch.where(none, torch.tensor(float((width - fw) // 2)), j)
    return torch.stack([j, i, j + w, i + h], dim=1)


class Augment:
    """One kind of view (a global or a local crop): ``sample`` draws parameters, ``apply``
    makes the views. ``uint8 (B, 3, H, W)`` in, normalised ``float32 (B, 3, size, size)`` out."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float],
        jitter_prob: float,
        jitter_strength: Sequence[float],
        grayscale_prob: float,
        blur_prob: float,
        solarize_prob: float,
        hflip_prob: float,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        if len(jitter_strength) != 4:
            raise ValueError(f"jitter_strength is (brightness, contrast, saturation, hue), got {jitter_strength}")
        self.size = size
        self.scale = tuple(scale)
        self.jitter_prob = jitter_prob
        self.jitter_strength = tuple(float(s) for s in jitter_strength)
        self.grayscale_prob = grayscale_prob
        self.blur_prob = blur_prob
        self.solarize_prob = solarize_prob
        self.hflip_prob = hflip_prob
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.kernel_size = blur_kernel_size(size)

    def sample(self, n: int, height: int, width: int, gen: torch.Generator) -> ViewParams:
        """Parameters of ``n`` views of ``height x width`` images, drawn from ``gen`` (CPU)."""
        b, c, s, h = self.jitter_strength
        lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
        hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
        coin = lambda p: torch.rand(n, generator=gen) < p  # noqa: E731 - a local shorthand
        return ViewParams(
            boxes=_crop_boxes(n, height, width, self.scale, gen),
            jitter=coin(self.jitter_prob),
            factors=lo + (hi - lo) * torch.rand(n, 4, generator=gen),
            order=torch.rand(n, 4, generator=gen).argsort(dim=1),  # a uniform permutation per view
            gray=coin(self.grayscale_prob),
            blur=coin(self.blur_prob),
            sigma=torch.empty(n).uniform_(*_SIGMA, generator=gen),
            solarize=coin(self.solarize_prob),
            flip=coin(self.hflip_prob),
        )

    def apply(self, images: Tensor, params: ViewParams, index: Tensor | None = None) -> Tensor:
        """The views of ``images`` (``(B, 3, H, W)``, uint8 or float in [0, 1]) with ``params``;
        view ``r`` is cut from image ``index[r]`` (default: view ``r`` of image ``r``)."""
        x = to_unit_float(images)
        n = params.boxes.shape[0]
        index = torch.arange(n) if index is None else index
        rois = torch.cat([index[:, None].float(), params.boxes], dim=1)  # (n, 5)
        rois, flags, sigma, mean, std = _send(x.device, rois, params.flags(), params.sigma, self.mean, self.std)
        gray, blur, solarize, flip = (flags > 0.5).T[:, :, None, None, None]  # each (n, 1, 1, 1)
        x = roi_align(x, rois, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)  # (n, 3, S, S)
        if self.jitter_prob > 0 and bool(params.jitter.any()):
            x = _color_jitter(x, params.factors, params.order, params.jitter.nonzero()[:, 0])
        if self.grayscale_prob > 0:
            x = torch.where(gray, _grayscale(x).expand_as(x), x)
        if self.blur_prob > 0 and bool(params.blur.any()):
            x = torch.where(blur, _gaussian_blur(x, sigma, self.kernel_size), x)
        if self.solarize_prob > 0:
            x = torch.where(solarize & (x >= _SOLARIZE_THRESHOLD), 1.0 - x, x)
        if self.hflip_prob > 0:
            x = torch.where(flip, x.flip(-1), x)
        return (x - mean) / std

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        """One view of each image: ``(B, 3, size, size)``."""
        params = self.sample(images.shape[0], images.shape[-2], images.shape[-1], gen)
        return self.apply(images, params)


class MultiViews:
    """``n_global`` global and ``n_local`` local views of every image of a batch.

    ``__call__(images uint8 (B, 3, H, W), gen, shard)`` returns ``global (Vg, B, 3, G, G)`` and
    ``local (Vl, B, 3, L, L)`` (``Vl`` may be 0), view-major as the model takes them.

    Under DDP, ``shard = (rank, world)``: ``images`` is this rank's slice of a global batch of
    ``B * world`` images. The parameters are drawn for the whole global batch from ``gen``
    (seeded alike on every rank) and each rank keeps its slice, so ranks make different views
    of their different images, a rerun makes the same, and the views of ``world`` ranks are
    exactly those one process makes of the whole batch.
    """

    def __init__(self, n_global: int, n_local: int, global_aug: Augment, local_aug: Augment):
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        self.n_global, self.n_local = n_global, n_local
        self.global_aug, self.local_aug = global_aug, local_aug

    def __call__(self, images: Tensor, gen: torch.Generator, shard: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        rank, world = shard
        b = images.shape[0]
        x = to_unit_float(images)  # once, shared by every view
        out = []
        for aug, v in ((self.global_aug, self.n_global), (self.local_aug, self.n_local)):
            if v == 0:
                out.append(x.new_empty(0, b, 3, aug.size, aug.size))
                continue
            params = aug.sample(v * b * world, x.shape[-2], x.shape[-1], gen)  # row k*(B*world) + j: view k of image j
            rows = (torch.arange(v)[:, None] * (b * world) + rank * b + torch.arange(b)[None, :]).reshape(-1)
            index = torch.arange(b).repeat(v)  # view-major: views 0..v-1 of images 0..b-1
            out.append(aug.apply(x, select(params, rows), index).view(v, b, 3, aug.size, aug.size))
        return out[0], out[1]

    def __repr__(self) -> str:
        return f"MultiViews(n_global={self.n_global}, n_local={self.n_local}, global_size={self.global_aug.size}, local_size={self.local_aug.size})"


def select(params: ViewParams, rows: Tensor) -> ViewParams:
    """The parameters of the views ``rows``."""
    return ViewParams(**{k: getattr(params, k)[rows] for k in ViewParams.__dataclass_fields__})


def concat(parts: Sequence[ViewParams]) -> ViewParams:
    """The parameters of several sets of views, one after the other."""
    return ViewParams(**{k: torch.cat([getattr(p, k) for p in parts]) for k in ViewParams.__dataclass_fields__})


def build_views(cfg: ViewsConfig) -> MultiViews:
    """The :class:`MultiViews` described by the ``views`` section of the config."""
    shared = dict(
        jitter_prob=cfg.jitter_prob,
        jitter_strength=cfg.jitter_strength,
        grayscale_prob=cfg.grayscale_prob,
        blur_prob=cfg.blur_prob,
        solarize_prob=cfg.solarize_prob,
        hflip_prob=cfg.hflip_prob,
        mean=cfg.mean,
        std=cfg.std,
    )
    return MultiViews(
        cfg.n_global,
        cfg.n_local,
        Augment(cfg.global_size, cfg.global_scale, **shared),
        Augment(cfg.local_size, cfg.local_scale, **shared),
    )


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is taken to be in ``[0, 1]`` already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def eval_views(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The deterministic evaluation view: the whole (square) image resized to ``size``
    (antialiased), normalised. ``(B, 3, H, W)`` -> ``(B, 3, size, size)``."""
    x = to_unit_float(images)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------
# Colour operations on float (n, 3, H, W) batches in [0, 1], one factor per image.


def _send(device: torch.device, *parts: Tensor) -> list[Tensor]:
    """``parts`` (CPU tensors of one dtype) on ``device``, in one copy rather than one each: on a
    GPU every copy from the host is a call of its own. On the CPU, the tensors themselves."""
    if device.type == "cpu":
        return list(parts)
    flat = torch.cat([p.reshape(-1) for p in parts]).to(device, non_blocking=True)
    return [chunk.view(p.shape) for chunk, p in zip(flat.split([p.numel() for p in parts]), parts)]


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)  # (n, 1, H, W)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    # The blend with black: f * x + (1 - f) * 0, which is f * x (adding a zero changes nothing).
    return (f.view(-1, 1, 1, 1) * x).clamp_(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _grayscale(x), f)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotates the hue by ``shift`` (a fraction of the circle), through HSV."""
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    chroma = delta > 0
    rc, gc, bc = ((maxc[:, None] - x) / torch.where(chroma, delta, 1.0)[:, None]).unbind(1)
    r, g, _ = x.unbind(1)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(chroma, (h / 6.0) % 1.0, 0.0)
    lit = maxc > 0
    s = torch.where(lit, delta / torch.where(lit, maxc, 1.0), 0.0)
    h = (h + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB, the k-formula: channel c = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) % 6,
    # with n = 5, 3, 1 for red, green and blue.
    k = (6.0 * h[:, None] + torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)) % 6.0  # (n, 3, H, W)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc[:, None] - (maxc * s)[:, None] * weight).clamp_(0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _color_jitter(x: Tensor, factors: Tensor, order: Tensor, rows: Tensor | None = None) -> Tensor:
    """ColorJitter on the rows ``rows`` of ``x`` (default: all), with per-image factors
    ``(n, 4)`` applied in per-image ``order`` ``(n, 4)`` (both on the CPU); the other rows are
    returned as they are.

    Slot by slot, the jittered rows are gathered sorted by the operation they take in that slot,
    so that each operation runs once on a contiguous run of rows. The gathers and the factors are
    worked out on the CPU (``order`` is read there) and sent to ``x``'s device in one copy each:
    a slot costs one gather and one concatenation, not one gather and one scatter per operation.
    """
    rows = torch.arange(x.shape[0]) if rows is None else rows
    if rows.numel() == 0:
        return x
    order, factors = order[rows], factors[rows]
    held = torch.arange(rows.numel())  # which jittered row each position holds
    gathers, counts, slot_factors = [], [], []
    for slot in range(4):
        ops = order[held, slot]
        by_op = ops.argsort(stable=True)
        gathers.append(by_op)
        counts.append(torch.bincount(ops, minlength=4).tolist())
        held = held[by_op]
        slot_factors.append(factors[held, order[held, slot]])
    gathers[0] = rows[gathers[0]]  # the first slot gathers from x itself
    *gathers, scatter = _send(x.device, *gathers, rows[held])
    (slot_factors,) = _send(x.device, torch.stack(slot_factors))
    y = x
    for slot in range(4):
        y = y[gathers[slot]]
        parts = zip(_JITTER_OPS, y.split(counts[slot]), slot_factors[slot].split(counts[slot]))
        y = torch.cat([op(part, f) for op, part, f in parts if part.shape[0]])
    return x.index_copy(0, scatter, y)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, one ``sigma`` per image, reflect padding (as torchvision)."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) / 2.0
    t = torch.linspace(-half, half, kernel_size, device=x.device)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma[:, None]).square())  # (n, k)
    kernel = kernel / kernel.sum(1, keepdim=True)
    weight = kernel.repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel_size // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), weight[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)
