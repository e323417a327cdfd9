"""The trainer on a CUDA device: the same views as on the CPU, a whole tiny run under bf16
autocast, the fused optimiser and the training split held on the GPU. Skipped where there is
no CUDA device (CI's machines); run wherever there is one."""

from __future__ import annotations

import math

import pytest
import torch

from lejepa_tune.config import ViewsConfig, load_config
from lejepa_tune.data import TensorImages
from lejepa_tune.metrics import OBJECTIVE, REFERENCE_ACC
from lejepa_tune.models import build_model
from lejepa_tune.train import _device_copy, build_optimizer, train
from lejepa_tune.views import build_views
from tiny import TINY, Recorder, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda", 0)


def test_views_on_the_gpu_are_the_views_on_the_cpu():
    """Parameters are drawn on the CPU from the generator, so a seed makes the same views on
    either device; only the arithmetic's rounding differs."""
    views = build_views(ViewsConfig(n_global=3, n_local=2, jitter_prob=0.8, grayscale_prob=0.3, blur_prob=0.5, solarize_prob=0.3, hflip_prob=0.5))
    batch = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = views(batch, torch.Generator().manual_seed(5))
    gpu = views(batch.to(CUDA), torch.Generator().manual_seed(5))
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda" and g.shape == c.shape
        assert (g.cpu() - c).abs().max().item() < 2e-3


def test_a_tiny_run_trains_under_bf16_on_the_gpu(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=2")
    sink = Recorder(cfg)
    final = train(cfg, sink)
    assert [m["epoch"] for m in sink.reports] == [1, 2]
    for m in sink.reports:
        for key in ("train/loss", "train/inv", "train/sigreg", "train/probe_loss", "online/acc", OBJECTIVE):
            assert math.isfinite(m[key]), key
        assert m["train/loss"] == pytest.approx((1 - cfg.loss.lam) * m["train/inv"] + cfg.loss.lam * m["train/sigreg"], rel=1e-5)
    assert 0 < final[REFERENCE_ACC] <= 1
    model = build_model(cfg.model, num_classes=10)  # the encoder trained on the GPU loads on the CPU
    model.backbone.load_state_dict(torch.load(tmp_path / "run" / "checkpoint" / "encoder.pt", map_location="cpu"))


def test_the_optimiser_is_fused_and_the_split_is_held_on_the_gpu():
    cfg = load_config(None, TINY)
    assert build_optimizer(build_model(cfg.model, 10).to(CUDA), cfg.optim).defaults["fused"]
    assert not build_optimizer(build_model(cfg.model, 10), cfg.optim).defaults["fused"]
    split = TensorImages(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.arange(10))
    images, labels = _device_copy(split, CUDA)
    assert images.device.type == labels.device.type == "cuda" and torch.equal(labels.cpu(), split.labels)
    assert _device_copy(split, torch.device("cpu")) is None
