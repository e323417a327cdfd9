"""Exporting a trained encoder from its checkpoint, by path or storage URI: the state dicts and
config, and timm's own layout, which timm loads back into the very same network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from tiny import TINY_BASE

from lejepa_tune.cli import main
from lejepa_tune.config import config_from_dict
from lejepa_tune.export import export_encoder, fetch_checkpoint
from lejepa_tune.metrics import OBJECTIVE, OBJECTIVE_RESAMPLES, pack_floats
from lejepa_tune.models import create_backbone
from lejepa_tune.records import SweepRecords, TrialRecord, write_records
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


def test_select_exports_the_choice_and_names_its_near_ties(checkpoint, tmp_path, capsys):
    """`select` on a finished sweep whose choice the label-free images do not separate from
    another trial: it exports the choice, warns on stderr naming the other, and writes both in
    selection.json."""
    rng = np.random.default_rng(0)
    base = rng.normal(20.0, 0.5, 200)
    trials = [
        TrialRecord(tid, "completed", {"loss.lam": lam}, {OBJECTIVE: obj}, {OBJECTIVE_RESAMPLES: pack_floats(values)}, checkpoint=str(checkpoint), epochs=1)
        for tid, lam, obj, values in [("a", 0.02, 20.0, base), ("b", 0.05, 19.9, base - 0.1 + rng.normal(0, 0.3, 200)), ("c", 0.5, 15.0, base - 5)]
    ]
    sweep = tmp_path / "sweep"
    write_records(SweepRecords("s", {"search": {"loss.lam": {}}}, tuple(trials), str(sweep)))
    assert main(["select", str(sweep), "--export", str(tmp_path / "chosen")]) == 0
    err = capsys.readouterr().err
    # the same words as the report's warning: how far behind b is, and how often a is the higher
    assert err.startswith("warning: the choice is a near-tie: on resamples of the label-free images its objective is not reliably "
                          "above that of trial b (0.5% lower, the choice higher on "), err
    selection = json.loads((tmp_path / "chosen" / "selection.json").read_text())
    assert selection["trial_id"] == "a" and set(selection["near_ties"]) == {"b"} and 0.5 < selection["near_ties"]["b"] < 0.95
