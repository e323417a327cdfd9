"""Multi-crop views and the evaluation transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lejepa_tune.config import DataConfig, ViewsConfig
from lejepa_tune.data import build_datasets
from lejepa_tune.views import EvalDataset, MultiCropViews, ViewDataset, build_views, eval_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Every random augmentation off and the crop forced to the whole image.
NO_AUG = dict(
    n_global=1, n_local=0, global_size=32, local_size=16, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0),
    jitter_prob=0.0, jitter_strength=(0.4, 0.4, 0.2, 0.1), grayscale_prob=0.0, blur_prob=0.0,
    solarize_prob=0.0, hflip_prob=0.0, mean=MEAN, std=STD,
)


def noise_image(size: tuple[int, int] = (32, 32), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def uniform_image(value: int, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


@pytest.mark.parametrize("n_local", [0, 3])
def test_view_shapes_and_dtypes(n_local: int):
    views = build_views(ViewsConfig(n_global=2, n_local=n_local, global_size=32, local_size=16))
    globals_, locals_ = views(noise_image((40, 36)))
    assert globals_.shape == (2, 3, 32, 32) and globals_.dtype == torch.float32
    assert locals_.shape == (n_local, 3, 16, 16) and locals_.dtype == torch.float32
    assert torch.isfinite(globals_).all() and torch.isfinite(locals_).all()


def test_views_are_random():
    views = build_views(ViewsConfig(n_global=2, n_local=2))
    image = noise_image()
    first, second = views(image), views(image)
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    # The views of one call are drawn independently too.
    assert not torch.equal(first[0][0], first[0][1])


def test_normalization_without_augmentation_matches_eval_transform():
    image = noise_image()
    globals_, _ = MultiCropViews(**NO_AUG)(image)
    expected = eval_transform(32, MEAN, STD)(image)
    torch.testing.assert_close(globals_[0], expected)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(expected, (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])


def test_views_are_roughly_standardised():
    # Normalising with the image's own channel statistics gives about zero mean and unit std
    # (a smooth image, so that cropping and resizing keep its statistics).
    torch.manual_seed(0)
    image = noise_image((4, 4)).resize((64, 64), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float64) / 255
    mean, std = tuple(pixels.mean((0, 1))), tuple(pixels.std((0, 1)))
    views = build_views(ViewsConfig(n_global=16, jitter_prob=0.0, grayscale_prob=0.0, solarize_prob=0.0,
                                    blur_prob=0.0, global_size=32, mean=mean, std=std))
    globals_, _ = views(image)
    assert abs(globals_.mean().item()) < 0.25
    assert 0.7 < globals_.std().item() < 1.3


def test_solarize_threshold_is_half_the_range():
    views = MultiCropViews(**{**NO_AUG, "solarize_prob": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    bright, _ = views(uniform_image(200))
    dark, _ = views(uniform_image(100))
    torch.testing.assert_close(bright, torch.full_like(bright, 55 / 255))  # inverted
    torch.testing.assert_close(dark, torch.full_like(dark, 100 / 255))  # below 128: untouched


def test_flip_and_grayscale_probabilities():
    image = noise_image()
    plain = eval_transform(32, MEAN, STD)(image)
    flipped, _ = MultiCropViews(**{**NO_AUG, "hflip_prob": 1.0})(image)
    torch.testing.assert_close(flipped[0], plain.flip(-1))
    gray, _ = MultiCropViews(**{**NO_AUG, "grayscale_prob": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3})(image)
    torch.testing.assert_close(gray[0, 0], gray[0, 1])
    torch.testing.assert_close(gray[0, 1], gray[0, 2])


def test_invalid_view_counts():
    with pytest.raises(ValueError, match="n_global >= 1"):
        MultiCropViews(**{**NO_AUG, "n_global": 0})


def test_eval_transform_is_deterministic_and_square():
    transform = eval_transform(16, MEAN, STD)
    image = noise_image((40, 24))
    out = transform(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, transform(image))
    # A uniform image maps to exactly (v - mean) / std in every channel.
    gray = transform(uniform_image(128, size=20))
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(gray.mean((1, 2)), expected)
    torch.testing.assert_close(gray.std((1, 2)), torch.zeros(3), atol=1e-5, rtol=0)


def test_view_and_eval_datasets_collate_into_batches():
    splits = build_datasets(DataConfig(dataset="digits", image_size=32, max_train_samples=6, max_val_samples=5))
    views = build_views(ViewsConfig(n_global=2, n_local=3, global_size=32, local_size=16))
    train = ViewDataset(splits.train, views)
    assert len(train) == 6
    globals_, locals_, labels = next(iter(DataLoader(train, batch_size=4)))
    assert globals_.shape == (4, 2, 3, 32, 32) and locals_.shape == (4, 3, 3, 16, 16)
    assert labels.shape == (4,) and labels.dtype == torch.int64
    assert labels.tolist() == [splits.train[i][1] for i in range(4)]

    val = EvalDataset(splits.val, eval_transform(24, MEAN, STD))
    images, labels = next(iter(DataLoader(val, batch_size=5)))
    assert images.shape == (5, 3, 24, 24) and labels.tolist() == [splits.val[i][1] for i in range(5)]


def test_views_without_locals_collate():
    splits = build_datasets(DataConfig(dataset="digits", image_size=32, max_train_samples=3))
    train = ViewDataset(splits.train, build_views(ViewsConfig(n_global=2, n_local=0)))
    globals_, locals_, _ = next(iter(DataLoader(train, batch_size=3)))
    assert globals_.shape == (3, 2, 3, 32, 32) and locals_.shape == (3, 0, 3, 16, 16)
