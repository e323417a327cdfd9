"""The model: any timm backbone (tiny ViTs and ResNets), the projector, the detached probe."""

from __future__ import annotations

import pytest
import torch

from lejepa_tune.config import ModelConfig
from lejepa_tune.models import GlobalBatchNorm1d, Projector, build_model


@pytest.mark.parametrize(
    "backbone,kwargs,embed_dim",
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}, 48),
        ("resnet18", {}, 512),
    ],
)
def test_timm_backbones_with_global_and_local_views(backbone, kwargs, embed_dim):
    if backbone.startswith("vit"):
        kwargs = {**kwargs, "dynamic_img_size": True}  # ViTs take the smaller local crops this way
    model = build_model(ModelConfig(backbone=backbone, backbone_kwargs=kwargs, proj_hidden_dims=(32,), proj_dim=8), num_classes=10)
    assert model.embed_dim == embed_dim
    emb, proj, logits = model(torch.randn(2, 4, 3, 32, 32), torch.randn(3, 4, 3, 16, 16))  # (V, B, ...)
    assert emb.shape == (2, 4, embed_dim) and proj.shape == (5, 4, 8) and logits.shape == (2, 4, 10)


def test_views_stay_in_view_major_order():
    model = build_model(ModelConfig(proj_hidden_dims=(16,), proj_dim=4), num_classes=3).eval()
    views = torch.randn(2, 3, 3, 32, 32)  # (V, B, ...)
    _, proj, _ = model(views)
    with torch.no_grad():
        alone = model.projector(model.backbone(views[1]))  # every sample's second view
    torch.testing.assert_close(proj[1], alone)


def test_probe_never_trains_the_backbone():
    model = build_model(ModelConfig(proj_hidden_dims=(16,), proj_dim=4), num_classes=3)
    _, _, logits = model(torch.randn(2, 4, 3, 32, 32))
    logits.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.probe.parameters())


def test_projector_shape_and_plain_batchnorm_outside_ddp():
    proj = Projector(12, [20, 24], 6)
    assert proj(torch.randn(5, 12)).shape == (5, 6)
    bn = GlobalBatchNorm1d(3)
    ref = torch.nn.BatchNorm1d(3)
    x = torch.randn(8, 3)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_unknown_backbone_and_bad_kwargs_name_the_key():
    with pytest.raises(ValueError, match=r"^model\.backbone: "):
        build_model(ModelConfig(backbone="no_such_net"), num_classes=2)
    with pytest.raises(ValueError, match=r"^model\.backbone_kwargs: "):
        build_model(ModelConfig(backbone="resnet18", backbone_kwargs={"no_such_kw": 1}), num_classes=2)
