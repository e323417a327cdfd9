"""Exporting a trained encoder from its checkpoint, by path or storage URI: the state dicts and
config, and timm's own layout, which timm loads back into the very same network."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from tiny import TINY_BASE

from lejepa_tune.config import config_from_dict
from lejepa_tune.export import export_encoder, fetch_checkpoint
from lejepa_tune.models import create_backbone
from lejepa_tune.train import LocalSink, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({**TINY_BASE, "eval": {"enabled": False}, "train": {**TINY_BASE["train"], "output_dir": str(out)}})
    train(cfg, LocalSink(cfg, verbose=False))
    return out / "checkpoint"


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_timm_loads_the_export_as_the_trained_encoder(checkpoint, tmp_path, as_uri):
    files = export_encoder(f"file://{checkpoint}" if as_uri else str(checkpoint), tmp_path / "chosen", {"trial_id": "t1"})
    assert all(f.is_file() for f in files)
    assert json.loads((tmp_path / "chosen" / "selection.json").read_text()) == {"trial_id": "t1"}
    cfg = config_from_dict(TINY_BASE)
    trained = create_backbone(cfg.model.backbone, cfg.model.backbone_kwargs)
    trained.load_state_dict(torch.load(checkpoint / "encoder.pt", weights_only=True))
    loaded = timm.create_model(f"local-dir:{tmp_path / 'chosen'}", pretrained=True, num_classes=0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), trained.eval()(x), rtol=0, atol=0)


def test_a_missing_or_incomplete_checkpoint_is_named(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such checkpoint directory"):
        fetch_checkpoint(str(tmp_path / "nowhere"), tmp_path / "copy")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "encoder.pt").write_bytes((checkpoint / "encoder.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"partial: the checkpoint lacks projector\.pt, config\.yaml$"):
        export_encoder(str(partial), tmp_path / "out", {})
