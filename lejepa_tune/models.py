"""The encoder (any timm backbone), the BatchNorm MLP projector and the online probe."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import timm
import torch
from torch import Tensor, nn

from .distributed import autograd_all_reduce, world_size

__all__ = ["GlobalBatchNorm1d", "Projector", "LeJEPAModel", "known_backbone", "create_backbone", "build_model"]

# Prefixes of names that ``timm.create_model`` resolves elsewhere (a hub repo, a local directory).
_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the *global* batch under DDP.

    ``nn.SyncBatchNorm`` does the same on GPUs only; this one sums ``x`` and ``x²`` over
    ranks with the autograd-aware all-reduce, so it also runs with gloo on CPU and keeps the
    2-process loss and gradients equal to those of 1 process on the concatenated batch.
    Outside DDP, or in eval mode, it is exactly ``nn.BatchNorm1d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (N, C), got {tuple(x.shape)}")
        xf = x.float()
        stats = torch.cat([xf.sum(0), xf.square().sum(0), xf.new_tensor([x.size(0)])])  # (2C+1,)
        stats = autograd_all_reduce(stats)
        c = x.size(1)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.square()).clamp_min(0.0)  # biased, as BatchNorm uses
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum=None means a cumulative average, as in nn.BatchNorm1d.
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


class Projector(nn.Sequential):
    """``in_dim -> hidden_dims... -> out_dim`` MLP: Linear-BatchNorm-ReLU blocks (global-batch
    BatchNorm under DDP), a plain last Linear. Small ``out_dim`` (16-64) works well for LeJEPA."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int):
        layers: list[nn.Module] = []
        dim = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(dim, hidden), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True)]
            dim = hidden
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


def known_backbone(name: str) -> bool:
    """Whether timm knows the architecture ``name`` (with or without a ``.tag``), without
    building it; names with a source prefix (``hf-hub:``, ``local-dir:``) are taken on trust."""
    return name.startswith(_SOURCE_PREFIXES) or timm.is_model(name)


def create_backbone(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm model without classifier head (``num_classes=0``), never with pretrained weights
    (nothing is downloaded). ``kwargs`` go to ``timm.create_model`` (``img_size``,
    ``patch_size``, ``embed_dim``, ``depth``... for tiny CPU-sized models)."""
    kwargs = dict(kwargs or {})
    kwargs.pop("num_classes", None)
    kwargs.pop("pretrained", None)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise ValueError(f"model.backbone: {err}") from None
    except TypeError as err:  # a keyword the architecture does not take
        raise ValueError(f"model.backbone_kwargs: {name}: {err}") from None


class LeJEPAModel(nn.Module):
    """``backbone`` (images -> embeddings ``(B, D)``), ``projector`` (``(B, D) -> (B, K)``) and
    ``probe`` (LayerNorm + Linear on the *detached* embedding: it monitors, never trains the
    backbone)."""

    def __init__(self, backbone: nn.Module, projector: Projector, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.embed_dim = projector.in_dim
        self.probe = nn.Sequential(nn.LayerNorm(self.embed_dim), nn.Linear(self.embed_dim, num_classes))

    def forward(self, global_views: Tensor, local_views: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``global_views (Vg, B, C, G, G)``, optional ``local_views (Vl, B, C, L, L)``
        (view-major, as :class:`lejepa_tune.views.MultiViews` makes them).

        Returns ``emb (Vg, B, D)`` of the global views, ``proj (V, B, K)`` of all views (global
        first) and the probe's ``logits (Vg, B, num_classes)``.
        """
        if global_views.dim() != 5:
            raise ValueError(f"global_views must be (V, B, C, H, W), got {tuple(global_views.shape)}")
        vg, b = global_views.shape[:2]
        emb = self.backbone(global_views.flatten(0, 1))  # (Vg*B, D)
        all_emb = emb
        if local_views is not None and local_views.size(0) > 0:
            all_emb = torch.cat([emb, self.backbone(local_views.flatten(0, 1))])  # (V*B, D)
        proj = self.projector(all_emb).reshape(-1, b, self.projector.out_dim)  # (V, B, K)
        logits = self.probe(emb.detach()).reshape(vg, b, -1)  # (Vg, B, C)
        return emb.reshape(vg, b, -1), proj, logits


def build_model(model_cfg: Any, num_classes: int) -> LeJEPAModel:
    """Builds the model from a :class:`~lejepa_tune.config.ModelConfig`."""
    backbone = create_backbone(model_cfg.backbone, model_cfg.backbone_kwargs)
    embed_dim = getattr(backbone, "num_features", None)
    if not isinstance(embed_dim, int):
        raise ValueError(f"model.backbone: {model_cfg.backbone} does not expose num_features")
    projector = Projector(embed_dim, model_cfg.proj_hidden_dims, model_cfg.proj_dim)
    return LeJEPAModel(backbone, projector, num_classes)
