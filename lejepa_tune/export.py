"""Exporting a trial's encoder from its checkpoint (wherever the sweep's storage is).

The export holds the timm backbone twice: as a state dict (``encoder.pt``, with the run's
``config.yaml``), and in timm's own Hugging Face layout (``config.json`` and
``model.safetensors``, as ``timm.models.save_for_hf`` writes them), which timm loads in one
line::

    timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs
import timm
import torch

from .config import load_config
from .models import create_backbone
from .records import filesystem

__all__ = ["fetch_checkpoint", "export_encoder", "EXPORTED"]

EXPORTED = ("encoder.pt", "projector.pt", "config.yaml")


def fetch_checkpoint(uri: str, dest: str | Path) -> Path:
    """Copies the checkpoint directory at ``uri`` (a path or a storage URI) to ``dest``."""
    fs, path = filesystem(uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such checkpoint directory")
    pyarrow.fs.copy_files(path, str(dest.resolve()), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return dest


def export_encoder(checkpoint_uri: str, out_dir: str | Path, selection: Mapping[str, Any]) -> list[Path]:
    """Writes the checkpoint's ``encoder.pt``, ``projector.pt`` and ``config.yaml``, the timm
    Hugging Face layout of the backbone, and ``selection.json`` (what chose it) into
    ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = fetch_checkpoint(checkpoint_uri, tmp)
        missing = [name for name in EXPORTED if not (local / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{checkpoint_uri}: the checkpoint lacks {', '.join(missing)}")
        for name in EXPORTED:
            shutil.copy2(local / name, out / name)
    cfg = load_config(out / "config.yaml")
    backbone = create_backbone(cfg.model.backbone, cfg.model.backbone_kwargs)
    backbone.load_state_dict(torch.load(out / "encoder.pt", map_location="cpu", weights_only=True))
    timm.models.save_for_hf(backbone, str(out), model_args=dict(cfg.model.backbone_kwargs), safe_serialization=True)
    (out / "selection.json").write_text(json.dumps(dict(selection), indent=2))
    return [out / name for name in (*EXPORTED, "config.json", "model.safetensors", "selection.json")]
