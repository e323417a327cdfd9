"""Batched views: shapes, the same parameter distributions as torchvision's per-image
transforms, the same pixels as torchvision's functional ops for given parameters, and
randomness that differs per rank but repeats per seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lejepa_tune.config import ViewsConfig
from lejepa_tune.train import stream_seed
from lejepa_tune.views import _JITTER_OPS, Augment, MultiViews, ViewParams, _color_jitter, _gaussian_blur, build_views, eval_views

NO_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def augment(size=16, scale=(0.08, 1.0), **kw):
    probs = dict(jitter_prob=0.0, jitter_strength=(0.4, 0.4, 0.2, 0.1), grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0, hflip_prob=0.0)
    return Augment(size, scale, **{**probs, **NO_NORM, **kw})


def images(n=4, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_local", [0, 3])
def test_shapes_are_view_major(n_local):
    cfg = ViewsConfig(n_global=2, n_local=n_local, global_size=24, local_size=12)
    g, l = build_views(cfg)(images(5), torch.Generator().manual_seed(0))
    assert g.shape == (2, 5, 3, 24, 24) and g.dtype == torch.float32
    assert l.shape == (n_local, 5, 3, 12, 12)


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (32, 32, (0.4, 1.0)), (24, 60, (0.3, 1.0))])
def test_crop_parameters_follow_torchvision(height, width, scale):
    """Area fraction, aspect ratio and position of the crops, against
    ``RandomResizedCrop.get_params`` drawn one image at a time (two-sample KS tests)."""
    n = 3000
    boxes = augment(scale=scale).sample(n, height, width, torch.Generator().manual_seed(0)).boxes
    ours = np.stack([(boxes[:, 2] - boxes[:, 0]).numpy(), (boxes[:, 3] - boxes[:, 1]).numpy(), boxes[:, 0].numpy(), boxes[:, 1].numpy()], 1)
    torch.manual_seed(1)
    img = torch.zeros(3, height, width)
    ref = np.array([(w, h, j, i) for i, j, h, w in (v2.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n))], dtype=float)
    for k, what in enumerate(("width", "height", "left", "top")):
        assert stats.ks_2samp(ours[:, k], ref[:, k]).pvalue > 1e-3, what
    area = ours[:, 0] * ours[:, 1] / (height * width)
    assert area.min() >= scale[0] * 0.8 and area.max() <= 1.0
    assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()


def test_per_view_probabilities_and_jitter_ranges():
    aug = augment(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.2, hflip_prob=0.5)
    p = aug.sample(20000, 32, 32, torch.Generator().manual_seed(0))
    for flags, prob in ((p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5), (p.solarize, 0.2), (p.flip, 0.5)):
        assert flags.float().mean().item() == pytest.approx(prob, abs=0.015)
    lo, hi = torch.tensor([0.6, 0.6, 0.8, -0.1]), torch.tensor([1.4, 1.4, 1.2, 0.1])
    assert ((p.factors >= lo) & (p.factors <= hi)).all()
    for k in range(4):  # uniform over the range: mean in the middle
        assert p.factors[:, k].mean().item() == pytest.approx(((lo + hi) / 2)[k].item(), abs=0.01)
    assert ((p.sigma >= 0.1) & (p.sigma <= 2.0)).all()
    assert sorted(p.order[0].tolist()) == [0, 1, 2, 3]  # a permutation per view
    first = torch.bincount(p.order[:, 0], minlength=4).float() / len(p.order)
    assert torch.allclose(first, torch.full((4,), 0.25), atol=0.015)  # every op goes first as often


def test_colour_ops_equal_torchvision_for_the_same_factors():
    x = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([[1.3, 0.7, 1.1, 0.05], [0.8, 1.2, 0.9, -0.08], [1.0, 1.0, 1.0, 0.0], [0.6, 1.4, 0.8, 0.1]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for img, f, o in zip(x, factors, order):
        for op in o.tolist():
            img = ops[op](img, float(f[op]))
        expected.append(img)
    assert torch.allclose(_color_jitter(x, factors, order), torch.stack(expected), atol=1e-5)
    sigma = torch.tensor([0.3, 0.9, 1.5, 2.0])
    blurred = torch.stack([TF.gaussian_blur(img, [5, 5], [float(s), float(s)]) for img, s in zip(x, sigma)])
    assert torch.allclose(_gaussian_blur(x, sigma, 5), blurred, atol=1e-5)


def test_jitter_gathered_by_operation_equals_each_row_jittered_alone():
    """The batched jitter (rows sorted by operation, slot by slot) makes exactly the pixels each
    jittered row gets from its own four operations in its own order, and leaves the other rows as
    they are."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 12, 12, generator=gen)
    p = augment(jitter_prob=0.5, jitter_strength=(0.8, 0.8, 0.8, 0.2)).sample(64, 32, 32, gen)
    rows = p.jitter.nonzero()[:, 0]
    assert 0 < len(rows) < 64
    out = _color_jitter(x, p.factors, p.order, rows)
    for i in range(64):
        img = x[i : i + 1]
        if p.jitter[i]:
            for op in p.order[i].tolist():
                img = _JITTER_OPS[op](img, p.factors[i : i + 1, op])
        assert torch.equal(out[i : i + 1], img), i


def test_crops_cut_the_right_pixels_and_flip_and_solarize():
    img = images(1)
    aug = augment(size=16, solarize_prob=1.0, hflip_prob=1.0)
    p = aug.sample(1, 32, 32, torch.Generator().manual_seed(0))
    p = ViewParams(**{**p.__dict__, "boxes": torch.tensor([[4.0, 8.0, 20.0, 24.0]])})  # a 16x16 crop: no resampling
    crop = img[0, :, 8:24, 4:20].float() / 255
    expected = torch.where(crop >= 128 / 255, 1 - crop, crop).flip(-1)
    assert torch.allclose(aug.apply(img, p)[0], expected, atol=1e-6)


def test_whole_image_without_augmentation_is_the_evaluation_view():
    img = images(3)
    aug = augment(size=32, scale=(1.0, 1.0), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    views = aug(img, torch.Generator().manual_seed(0))  # scale 1 on a square image: the whole image
    assert torch.allclose(views, eval_views(img, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), atol=1e-5)
    assert torch.equal(eval_views(img, 16, (0, 0, 0), (1, 1, 1)), eval_views(img, 16, (0, 0, 0), (1, 1, 1)))


def test_a_seed_repeats_the_views_and_ranks_draw_different_ones():
    views = build_views(ViewsConfig(n_global=2, blur_prob=0.5, hflip_prob=0.5))
    batch = images(8)

    def draw(shard, epoch=3):
        return views(batch[4 * shard[0] : 4 * shard[0] + 4] if shard[1] == 2 else batch, torch.Generator().manual_seed(stream_seed(0, epoch, 0)), shard)[0]

    assert torch.equal(draw((0, 2)), draw((0, 2)))  # a rerun with the same seed
    whole = draw((0, 1))
    ranks = [draw((r, 2)) for r in (0, 1)]
    # Two ranks at the same step make different views (of different images, with different
    # parameters)... and together exactly the views one process makes of the whole batch.
    assert torch.equal(torch.cat(ranks, dim=1), whole)
    aug = build_views(ViewsConfig(n_global=1)).global_aug
    params = aug.sample(8, 32, 32, torch.Generator().manual_seed(stream_seed(0, 3, 0))).boxes
    assert not torch.equal(params[:4], params[4:])  # the two ranks' slices differ
    assert not torch.allclose(draw((0, 1), epoch=4), whole)


def test_views_run_on_the_device_of_the_images():
    views = build_views(ViewsConfig(jitter_prob=1.0, grayscale_prob=0.5, blur_prob=1.0, solarize_prob=0.5, hflip_prob=0.5))
    g, _ = views(images(4), torch.Generator().manual_seed(0))
    assert g.device.type == "cpu" and torch.isfinite(g).all()
    # Normalised views: about zero mean, unit spread, for uniform pixels (mean 0.5, std ~0.29).
    assert abs(g.mean().item() + 0.2) < 0.4 and 0.5 < g.std().item() < 2.5


def test_views_of_images_on_another_device_are_made_there():
    """The path a GPU takes (the parameters sent in one copy, the jitter's gathers and factors in
    one each), run on PyTorch's ``meta`` device, which has shapes but no data: every view is made
    on the images' device with the right shape. ``tests/test_cuda.py`` checks the pixels on a GPU."""
    views = build_views(ViewsConfig(n_global=2, n_local=2, local_size=16, jitter_prob=0.8, grayscale_prob=0.3, blur_prob=0.5, solarize_prob=0.3, hflip_prob=0.5))
    g, l = views(images(5).to("meta"), torch.Generator().manual_seed(0))
    assert g.device.type == l.device.type == "meta"
    assert g.shape == (2, 5, 3, 32, 32) and l.shape == (2, 5, 3, 16, 16) and g.dtype == l.dtype == torch.float32


def test_invalid_view_counts():
    aug = augment()
    with pytest.raises(ValueError, match="n_global"):
        MultiViews(0, 0, aug, aug)
    with pytest.raises(ValueError, match="jitter_strength"):
        augment(jitter_strength=(0.4, 0.4))
