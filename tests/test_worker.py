"""A Ray Train worker's side of a trial: a real Ray Train torch run of ``train_worker``, and
the worker's quiet logging."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import tempfile
import time

import pytest
import ray.train
from tiny import TINY_BASE

from lejepa_tune.backend import torch_trainer
from lejepa_tune.config import config_from_dict, config_to_dict
from lejepa_tune.metrics import EPOCH, LOSS
from lejepa_tune.worker import _quiet_ray_train, train_worker


def test_ray_trains_per_report_loggers_are_lowered_to_warnings():
    package = os.path.dirname(ray.train.__file__)
    chatty = logging.getLogger(os.path.join(package, "v2", "_internal", "some_module.py"))
    chatty.setLevel(logging.INFO)
    ours = logging.getLogger("lejepa_tune.test_worker")
    ours.setLevel(logging.INFO)
    _quiet_ray_train()
    assert chatty.level == logging.WARNING
    assert ours.level == logging.INFO


def fit(tmp_path, cfg):
    trainer = torch_trainer(
        train_worker,
        train_loop_config={"config": config_to_dict(cfg), "cpus_per_worker": 1, "data": {"ref": None}, "started_at": time.time()},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="run", storage_path=str(tmp_path / "storage"),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
    return trainer.fit()


@pytest.mark.slow
def test_a_worker_reports_its_last_epoch_with_its_checkpoint_and_keeps_no_local_copy(local_ray, tmp_path):
    """(Resuming from the checkpoint in storage after a worker dies: test_faults.)"""
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "lejepa_ckpt_*")))
    cfg = config_from_dict({**TINY_BASE, "eval": {"enabled": False}, "train": {**TINY_BASE["train"], "output_dir": str(tmp_path / "out")}})
    result = fit(tmp_path, cfg)
    assert result.error is None
    assert result.metrics[EPOCH] == 1 and math.isfinite(result.metrics[LOSS])
    assert {"encoder.pt", "projector.pt", "state.pt", "config.yaml", "metrics.json"} <= set(os.listdir(result.checkpoint.path))
    assert json.loads(open(os.path.join(result.checkpoint.path, "metrics.json")).read())[EPOCH] == 1
    # Each checkpoint is uploaded to storage, then its local copy deleted.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "lejepa_ckpt_*"))) == before
