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


def test_projector_shape():
    proj = Projector(12, [20, 24], 6)
    assert proj(torch.randn(5, 12)).shape == (5, 6)
    assert [type(m) for m in proj] == [torch.nn.Linear, GlobalBatchNorm1d, torch.nn.ReLU] * 2 + [torch.nn.Linear]


# Two ranks holding 5 and 3 rows of one batch; the row weights make every gradient depend on
# every row.
ROWS = (range(0, 5), range(5, 8))


def _batch():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 3, generator=g) * 2 + 1 for _ in range(2)], torch.randn(8, 3, generator=g)


def _batchnorm_steps(momenta):
    """Two training steps of GlobalBatchNorm1d on this rank's rows, then one in eval mode, for
    each momentum."""
    return {m: _batchnorm_run(m) for m in momenta}


def _batchnorm_run(momentum):
    from lejepa_tune.distributed import rank

    steps, w = _batch()
    bn = GlobalBatchNorm1d(3, momentum=momentum)
    mine = ROWS[rank()]
    out = []
    for x in steps:
        x = x[mine].clone().requires_grad_()
        y = bn(x)
        (y * w[mine]).sum().backward()
        out.append({"y": y.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad.clone(), "bias_grad": bn.bias.grad.clone()})
        bn.zero_grad()
    bn.eval()
    return {"steps": out, "running": (bn.running_mean, bn.running_var, bn.num_batches_tracked), "eval": bn(steps[0][mine]).detach()}


@pytest.fixture(scope="module")
def batchnorm_on_two_ranks(gloo_ranks):
    return gloo_ranks.run(_batchnorm_steps, (0.1, None))


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_batchnorm_under_ddp_is_batchnorm_of_the_global_batch(batchnorm_on_two_ranks, momentum):
    """Outputs, gradients and running statistics of 2 ranks equal nn.BatchNorm1d's on the
    concatenated batch (a rank's parameter gradients are its share of the sum, as DDP sums them)."""
    ranks = [r[momentum] for r in batchnorm_on_two_ranks]
    steps, w = _batch()
    ref = torch.nn.BatchNorm1d(3, momentum=momentum)
    for i, x in enumerate(steps):
        x = x.clone().requires_grad_()
        y = ref(x)
        (y * w).sum().backward()
        for r, rows in enumerate(ROWS):
            got = ranks[r]["steps"][i]
            torch.testing.assert_close(got["y"], y.detach()[rows])
            torch.testing.assert_close(got["x_grad"], x.grad[rows])
        torch.testing.assert_close(sum(ranks[r]["steps"][i]["weight_grad"] for r in range(2)), ref.weight.grad)
        torch.testing.assert_close(sum(ranks[r]["steps"][i]["bias_grad"] for r in range(2)), ref.bias.grad)
        ref.zero_grad()
    ref.eval()
    for r, rows in enumerate(ROWS):
        mean, var, tracked = ranks[r]["running"]
        torch.testing.assert_close(mean, ref.running_mean)
        torch.testing.assert_close(var, ref.running_var)
        assert tracked == ref.num_batches_tracked == 2
        torch.testing.assert_close(ranks[r]["eval"], ref(steps[0][rows]).detach())


def test_unknown_backbone_and_bad_kwargs_name_the_key():
    with pytest.raises(ValueError, match=r"^model\.backbone: "):
        build_model(ModelConfig(backbone="no_such_net"), num_classes=2)
    with pytest.raises(ValueError, match=r"^model\.backbone_kwargs: "):
        build_model(ModelConfig(backbone="resnet18", backbone_kwargs={"no_such_kw": 1}), num_classes=2)
