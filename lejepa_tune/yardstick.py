"""The fixed-yardstick loss: every trial's encoder measured by the same ruler.

Raw LeJEPA training losses of two trials compare only when they were measured the same way.
SIGReg's statistic is ``N`` times a distance (``N`` = the batch size), the invariance term
depends on how many views there are and how they are made, and λ weighs the two. A sweep
over ``train.batch_size`` or ``views.*`` therefore yields losses on different scales.

The yardstick re-measures each trained encoder (backbone + projector, in eval mode, under
``torch.no_grad``, fp32) on one fixed protocol shared by all trials:

* the same held-out images (the validation split; labels are never read),
* cut into the same batches of one fixed size; the last incomplete batch is dropped, since
  SIGReg's scale depends on ``N``,
* the same ``n_views`` global views of each image, made by one augmentation recipe (the
  sweep's *base* ``views`` section, local views dropped) from a torch RNG seeded per batch,
  so every trial sees bit-identical pixels whatever its own view settings were,
* the same SIGReg slicing directions (a fixed seed, step ``b`` for batch ``b``) and knots,
* the same reference λ:  ``loss = (1 - λ) · inv + λ · sigreg``, averaged over batches.

Trials may differ in projector width (``model.proj_dim`` is often searched). Both terms are
per-dimension normalised: invariance is a mean over coordinates, and each SIGReg slice is a
1-D projection on a unit direction whose statistic does not grow with ``K``. The directions
for different ``K`` are different draws of the same seeded generator.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .config import ViewsConfig, load_config
from .losses import SIGReg, invariance
from .models import Projector, create_backbone
from .train import resolve_device
from .views import build_views

if TYPE_CHECKING:
    from .search_space import SweepSpec
    from .sweep import TrialRecord

__all__ = [
    "YARDSTICK_KEYS",
    "YARDSTICK_SLICES",
    "load_encoder",
    "find_checkpoint",
    "Yardstick",
    "yardstick_loss",
    "yardstick_for_sweep",
]

YARDSTICK_KEYS = ("yardstick/loss", "yardstick/inv", "yardstick/sigreg")
# More slices than a training step uses: the yardstick is a handful of forward passes, and
# more directions make the statistic less noisy (the paper trains with 1024).
YARDSTICK_SLICES = 1024
# Views of all batches are kept in memory (generated once, shared by every trial) up to this
# size; beyond it each trial regenerates them, identically, from the per-batch seeds.
_CACHE_BYTES = 256 * 2**20


def load_encoder(checkpoint_dir: str | Path) -> tuple[nn.Module, Projector]:
    """The trial's timm backbone and projector, built from the checkpoint's ``config.yaml``
    and loaded from ``encoder.pt`` and ``projector.pt`` (on the CPU, in eval mode)."""
    checkpoint_dir = Path(checkpoint_dir)
    cfg = load_config(checkpoint_dir / "config.yaml")
    backbone = create_backbone(cfg.model.backbone, cfg.model.backbone_kwargs)
    projector = Projector(backbone.num_features, cfg.model.proj_hidden_dims, cfg.model.proj_dim)
    backbone.load_state_dict(torch.load(checkpoint_dir / "encoder.pt", map_location="cpu", weights_only=True))
    projector.load_state_dict(torch.load(checkpoint_dir / "projector.pt", map_location="cpu", weights_only=True))
    return backbone.eval(), projector.eval()


def find_checkpoint(sweep_dir: str | Path, trial: TrialRecord) -> Path | None:
    """The trial's checkpoint directory: ``<sweep_dir>/trials/<trial_id>/checkpoint`` (what
    rank 0 wrote), else the ``checkpoint`` Ray recorded; ``None`` when neither holds one."""
    candidates = [Path(sweep_dir) / "trials" / trial.trial_id / "checkpoint"]
    if trial.checkpoint:
        candidates.append(Path(trial.checkpoint))
    for path in candidates:
        if all((path / f).is_file() for f in ("encoder.pt", "projector.pt", "config.yaml")):
            return path
    return None


class Yardstick:
    """One fixed measuring protocol; call it on a checkpoint directory to measure that encoder.

    Args:
        images: a dataset of ``(PIL image, label)``; labels are ignored.
        views: the augmentation recipe (``n_global`` and ``n_local`` are overridden by
            ``n_views`` and 0); ``None`` means the package defaults.
        lam: the reference λ of ``(1 - λ) · inv + λ · sigreg``.
        batch_size: images per batch, clamped to ``len(images)``; ``len(images) // batch_size``
            full batches are used, the remainder dropped.
        n_views: global views per image (``>= 1``; with 1 view invariance is 0).
        num_slices, num_knots, t_max: SIGReg's settings.
        seed: seeds both the views (per batch) and SIGReg's directions.
    """

    def __init__(
        self,
        images: Dataset,
        views: ViewsConfig | None = None,
        *,
        lam: float = 0.05,
        batch_size: int = 256,
        n_views: int = 2,
        num_slices: int = YARDSTICK_SLICES,
        num_knots: int = 17,
        t_max: float = 3.0,
        seed: int = 0,
    ):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if batch_size < 2 or n_views < 1:
            raise ValueError(f"need batch_size >= 2 and n_views >= 1, got {batch_size} and {n_views}")
        if len(images) < 2:
            raise ValueError(f"the yardstick needs at least 2 images, got {len(images)}")
        self.images = images
        self.lam = float(lam)
        self.batch_size = min(batch_size, len(images))
        self.num_batches = len(images) // self.batch_size
        self.n_views = n_views
        self.seed = seed
        recipe = dataclasses.replace(views or ViewsConfig(), n_global=n_views, n_local=0)
        self.views = build_views(recipe)
        self.sigreg = SIGReg(num_slices, num_knots, t_max, seed=seed)
        size = recipe.global_size
        total = self.num_batches * self.batch_size * n_views * 3 * size * size * 4
        self._cache: dict[int, Tensor] | None = {} if total <= _CACHE_BYTES else None

    @classmethod
    def from_spec(cls, spec: SweepSpec, images: Dataset, seed: int = 0) -> Yardstick:
        """The sweep's yardstick: ``selection.yardstick_{lam, batch_size, views}``, the base
        config's view recipe and SIGReg knots, :data:`YARDSTICK_SLICES` slices."""
        sel = spec.selection
        return cls(
            images,
            spec.base.views,
            lam=sel.yardstick_lam,
            batch_size=sel.yardstick_batch_size,
            n_views=sel.yardstick_views,
            num_knots=spec.base.loss.num_knots,
            t_max=spec.base.loss.t_max,
            seed=seed,
        )

    def batch(self, index: int) -> Tensor:
        """The views of batch ``index``: ``(n_views, batch_size, 3, G, G)``, the same on every
        call. The global torch RNG is left as it was."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        start = index * self.batch_size
        # torchvision's random transforms draw from the global CPU generator: fork it, seed it
        # for this batch alone, and make the views in this process in a fixed order.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed * 1_000_003 + index)
            views = [self.views(self.images[i][0])[0] for i in range(start, start + self.batch_size)]
        out = torch.stack(views, dim=1)  # (V, B, 3, G, G)
        if self._cache is not None:
            self._cache[index] = out
        return out

    @torch.no_grad()
    def __call__(self, checkpoint_dir: str | Path, device: torch.device | str | None = None) -> dict[str, float]:
        """``{"yardstick/loss", "yardstick/inv", "yardstick/sigreg"}`` of the checkpoint's
        encoder: means over the batches. The global torch RNG is left as it was."""
        device = torch.device(device) if device is not None else resolve_device("auto")
        with torch.random.fork_rng(devices=[]):  # building the modules draws initial weights
            backbone, projector = load_encoder(checkpoint_dir)
        backbone.to(device)
        projector.to(device)
        inv_sum = sig_sum = 0.0
        for b in range(self.num_batches):
            x = self.batch(b).to(device)
            v, n = x.shape[:2]
            emb = backbone(x.flatten(0, 1))  # (V*B, D)
            proj = projector(emb).float().reshape(v, n, -1)  # (V, B, K)
            inv_sum += float(invariance(proj, n_global=v))
            sig_sum += float(self.sigreg(proj, step=b))
        inv, sig = inv_sum / self.num_batches, sig_sum / self.num_batches
        loss = (1.0 - self.lam) * inv + self.lam * sig
        return dict(zip(YARDSTICK_KEYS, (loss, inv, sig)))


def yardstick_loss(
    checkpoint_dir: str | Path,
    images: Dataset,
    *,
    lam: float,
    batch_size: int,
    n_views: int,
    num_slices: int = YARDSTICK_SLICES,
    seed: int = 0,
    device: torch.device | str | None = None,
    views: ViewsConfig | None = None,
) -> dict[str, float]:
    """The yardstick of one checkpoint (see :class:`Yardstick`); to measure many checkpoints,
    build one :class:`Yardstick` and call it on each (the views are then made once)."""
    stick = Yardstick(images, views, lam=lam, batch_size=batch_size, n_views=n_views, num_slices=num_slices, seed=seed)
    return stick(checkpoint_dir, device)


def yardstick_for_sweep(
    sweep_dir: str | Path,
    trials: Sequence[TrialRecord],
    spec: SweepSpec,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """``{trial_id: {"yardstick/loss": ..., "yardstick/inv": ..., "yardstick/sigreg": ...}}``
    for every completed trial with a checkpoint, measured on the validation split of the
    sweep's base data config (merge into the trials with
    :func:`lejepa_tune.selection.merge_metrics`). A completed trial without a checkpoint is
    skipped with a warning; its yardstick is then missing (``nan``) in the selection.
    """
    from .data import build_datasets

    completed = [t for t in trials if t.status == "completed"]
    if not completed:
        return {}
    stick = Yardstick.from_spec(spec, build_datasets(spec.base.data).val)
    results: dict[str, dict[str, float]] = {}
    missing = []
    for trial in completed:
        checkpoint = find_checkpoint(sweep_dir, trial)
        if checkpoint is None:
            missing.append(trial.trial_id)
            continue
        try:
            results[trial.trial_id] = stick(checkpoint, device)
        except Exception as err:  # name the trial; the cause stays attached
            raise RuntimeError(f"yardstick of trial {trial.trial_id} ({checkpoint}): {err}") from err
    if missing:
        warnings.warn(f"no checkpoint for completed trials {', '.join(missing)}: their yardstick is missing", stacklevel=2)
    return results
