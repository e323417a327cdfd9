"""The training loop: schedule, device/precision choice, a tiny end-to-end run, the untrained
baseline, divergence, and DDP under torchrun (2 gloo processes)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from lejepa_tune.config import load_config
from lejepa_tune.models import build_model
from lejepa_tune.train import TrainingDiverged, autocast_dtype, lr_factor, resolve_device, train

from tiny import TINY as TINY_BASE

TINY = [*TINY_BASE, "eval.linear_max_iter=100"]


def tiny_config(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}", *extra])


def test_lr_factor_warmup_then_cosine_to_min():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup, "cosine", 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # linear warmup
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(total, total, warmup, "cosine", 0.1) == pytest.approx(0.1)


def test_lr_factor_constant_and_no_warmup():
    assert [lr_factor(s, 50, 0, "constant", 0.0) for s in (0, 25, 49)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 50, 0, "cosine", 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_factor(20, 50, 0, "step", 0.0)


def test_precision_is_chosen_per_device():
    assert autocast_dtype("auto", torch.device("cpu")) is None  # fp32 on CPU
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="train.device"):
            resolve_device("cuda")


def test_tiny_run_reports_every_epoch_and_saves_a_loadable_encoder(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=2")
    reports = []
    final = train(cfg, report=lambda m, ckpt: reports.append((dict(m), ckpt)))
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    for m, _ in reports:
        for key in ("train/loss", "train/inv", "train/sigreg", "train/probe_loss", "online/acc"):
            assert math.isfinite(m[key]), key
        assert m["train/loss"] == pytest.approx((1 - cfg.loss.lam) * m["train/inv"] + cfg.loss.lam * m["train/sigreg"], rel=1e-6)
    assert "eval/linear_acc" not in reports[0][0]  # the frozen evaluation runs once, at the end
    for key in ("eval/linear_acc", "eval/knn_acc", "eval/rankme"):
        assert key in final and 0 <= final[key] <= (1 if "acc" in key else 1e9)
    ckpt = reports[-1][1]
    assert (ckpt / "encoder.pt").is_file() and (ckpt / "config.yaml").is_file()
    model = build_model(load_config(ckpt / "config.yaml").model, num_classes=10)
    model.backbone.load_state_dict(torch.load(ckpt / "encoder.pt"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_zero_epochs_evaluates_the_untrained_model(tmp_path):
    reports = []
    final = train(tiny_config(tmp_path, "train.epochs=0"), report=lambda m, c: reports.append(m))
    assert len(reports) == 1 and final["epoch"] == 0
    assert 0.0 < final["eval/linear_acc"] <= 1.0 and "train/loss" not in final


def test_a_diverging_run_raises_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=3", "optim.lr=1e30", "optim.warmup_epochs=0", "eval.enabled=false")
    with pytest.raises(TrainingDiverged, match=r"train/loss is nan after epoch \d.*optim\.lr=1e\+30"):
        train(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes(tmp_path):
    """`lejepa-tune train` under torchrun: each rank computes its own loss; both agree on the
    all-reduced mean, which is what rank 0 logs."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
        "-m", "lejepa_tune", "train", *sum((["--set", s] for s in TINY), []),
        "--set", "train.epochs=1", "--set", "eval.enabled=false", "--output-dir", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.jsonl").read_text().splitlines()[0]) for r in range(2)]
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert ranks[0]["local"]["train/loss"] != pytest.approx(ranks[1]["local"]["train/loss"], rel=1e-9)
    mean = (ranks[0]["local"]["train/loss"] + ranks[1]["local"]["train/loss"]) / 2
    for r in ranks:
        assert r["reduced"]["train/loss"] == pytest.approx(mean, rel=1e-9)
    assert logged["train/loss"] == pytest.approx(mean, rel=1e-9)
