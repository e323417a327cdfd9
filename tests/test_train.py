"""The training loop: schedule, batches, device/precision choice, a tiny end-to-end run, the
untrained baseline, divergence, exact resuming, and DDP under torchrun (2 gloo processes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lejepa_tune.cli import main
from lejepa_tune.config import load_config
from lejepa_tune.models import build_model
from lejepa_tune.metrics import DEVICE, OBJECTIVE, OBJECTIVE_RESAMPLES, REFERENCE_ACC, unpack_bits, unpack_floats
from lejepa_tune.train import TrainingDiverged, autocast_dtype, describe_device, epoch_batches, lr_factor, resolve_device, train
from ranks import free_port
from tiny import TINY, Recorder, tiny_config


def test_lr_factor_warmup_then_cosine_to_min():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup, "cosine", 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # linear warmup
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay
    assert f[55] == pytest.approx(0.55)  # halfway through the decay: halfway from 1 to 0.1
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


def test_a_run_names_what_trained_it():
    """On a CPU: the instruction set of PyTorch's kernels (the same configuration trains into
    another encoder where it differs) and the processor; on a GPU, its name."""
    cpu = describe_device(torch.device("cpu"))
    assert cpu.startswith(f"cpu ({torch.backends.cpu.get_cpu_capability()}): ") and len(cpu) > len("cpu (X): ")
    if torch.cuda.is_available():
        assert describe_device(torch.device("cuda", 0)) == f"cuda: {torch.cuda.get_device_name(0)}"


def test_epoch_batches_are_the_global_batch_split_over_ranks():
    whole = epoch_batches(100, 32, world=1, rank=0, seed=0, epoch=3)
    assert whole.shape == (3, 32)  # the incomplete last batch is dropped
    halves = [epoch_batches(100, 32, world=2, rank=r, seed=0, epoch=3) for r in (0, 1)]
    assert torch.equal(torch.cat(halves, dim=1), whole)
    assert not torch.equal(epoch_batches(100, 32, 1, 0, 0, epoch=4), whole)
    with pytest.raises(ValueError, match="train.batch_size: 32 is not divisible by the 3 processes"):
        epoch_batches(100, 32, world=3, rank=0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="exceeds the 100 training images"):
        epoch_batches(100, 128, world=1, rank=0, seed=0, epoch=0)


def test_tiny_run_reports_every_epoch_and_saves_a_loadable_encoder(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=2")
    sink = Recorder(cfg)
    final = train(cfg, sink)
    assert [m["epoch"] for m in sink.reports] == [1, 2]
    for m in sink.reports:
        for key in ("train/loss", "train/inv", "train/sigreg", "train/probe_loss", "train/scaled_loss", "online/acc", OBJECTIVE, "labelfree/embed/gmi"):
            assert math.isfinite(m[key]), key
        assert m["train/loss"] == pytest.approx((1 - cfg.loss.lam) * m["train/inv"] + cfg.loss.lam * m["train/sigreg"], rel=1e-6)
        assert m["time/labelfree_s"] > 0
        assert m[DEVICE] == describe_device(torch.device("cpu"))  # what trained it, every epoch
    assert REFERENCE_ACC not in sink.reports[0]  # the labelled evaluation runs once, at the end
    for key in ("eval/linear_acc", "eval/knn_acc", REFERENCE_ACC):
        assert 0 <= final[key] <= 1
    assert len(unpack_bits(final["eval/linear_cv_correct"])) == 128 + 60  # every labelled image, once
    # After the last epoch only: the objective on resamples of the label-free images.
    assert OBJECTIVE_RESAMPLES not in sink.reports[0]
    resamples = unpack_floats(final[OBJECTIVE_RESAMPLES])
    assert resamples.shape == (cfg.labelfree.resamples,) and np.isfinite(resamples).all()
    assert resamples.min() < final[OBJECTIVE] < resamples.max()
    ckpt = tmp_path / "run" / "checkpoint"
    model = build_model(load_config(ckpt / "config.yaml").model, num_classes=10)
    model.backbone.load_state_dict(torch.load(ckpt / "encoder.pt"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_zero_epochs_evaluates_the_untrained_model(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=0")
    sink = Recorder(cfg)
    final = train(cfg, sink)
    assert len(sink.reports) == 1 and final["epoch"] == 0
    assert 0.0 < final[REFERENCE_ACC] <= 1.0 and "train/loss" not in final and OBJECTIVE in final
    assert final[DEVICE].startswith("cpu (")
    assert OBJECTIVE_RESAMPLES in final
    unsampled = tiny_config(tmp_path / "none", "train.epochs=0", "labelfree.resamples=0")
    assert OBJECTIVE_RESAMPLES not in train(unsampled, Recorder(unsampled))


def test_a_diverging_run_raises_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=3", "optim.lr=1e30", "optim.warmup_epochs=0", "eval.enabled=false")
    with pytest.raises(TrainingDiverged, match=r"train/loss is nan after epoch \d.*optim\.lr=1e\+30"):
        train(cfg)


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    """Killed after epoch 1 of 3, resumed from its checkpoint: the same epochs 2 and 3 as a run
    that was never interrupted (bit for bit on one CPU process)."""
    whole_cfg = tiny_config(tmp_path / "whole", "train.epochs=3")
    whole = Recorder(whole_cfg)
    train(whole_cfg, whole)
    cut_cfg = tiny_config(tmp_path / "cut", "train.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        train(cut_cfg, Recorder(cut_cfg, stop_after=1))
    resumed_cfg = tiny_config(tmp_path / "cut", "train.epochs=3", f"train.resume_from={tmp_path / 'cut' / 'run' / 'checkpoint'}")
    resumed = Recorder(resumed_cfg)
    train(resumed_cfg, resumed)
    assert [m["epoch"] for m in resumed.reports] == [2, 3]
    for a, b in zip(whole.reports[1:], resumed.reports):
        for key in ("train/loss", "train/sigreg", "train/probe_loss", OBJECTIVE, REFERENCE_ACC):
            if key in a:
                assert a[key] == b[key], key


@pytest.mark.slow
def test_torchrun_two_gloo_processes_compute_what_one_process_computes(tmp_path):
    """`lejepa-tune train` under torchrun: 2 ranks (gloo) log the loss that one process logs
    for the same config, since SIGReg, BatchNorm and the views all see the global batch."""
    common = [*sum((["--set", s] for s in TINY), []), "--set", "train.epochs=1", "--set", "eval.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "lejepa_tune", "train", *common, "--output-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (done,) = [line for line in proc.stdout.splitlines() if line.startswith("done: ")]  # rank 0's, once
    assert done == f"done: outputs in {tmp_path / 'ddp'} (trained on {describe_device(torch.device('cpu'))})"
    # The one process: the same command in this one (no fresh interpreter to import torch again).
    assert main(["train", *common, "--output-dir", str(tmp_path / "one")]) == 0
    ddp, one = (json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0]) for d in ("ddp", "one"))
    for key in ("train/loss", "train/inv", "train/sigreg"):
        assert ddp[key] == pytest.approx(one[key], rel=2e-3), key
