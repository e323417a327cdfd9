"""Every metric key the package reports, in one place, and the scalar formulas made of them.

The same dict of these keys is reported each epoch by ``lejepa-tune train``, by a Ray Train
worker (to Tune, so Optuna and ASHA see it) and logged to MLflow: one set, wherever the loop
runs. Keys are namespaced:

* ``train/*``: the training loop (label-free);
* ``labelfree/*``: the fixed label-free evaluation set, measured every epoch (label-free);
* ``online/*``, ``eval/*``: anything that reads labels. These monitor and judge; they are never
  a search metric or a selection criterion (:func:`reads_labels`).
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np

__all__ = [
    "LOSS",
    "INV",
    "PROBE_LOSS",
    "SCALED_LOSS",
    "LR",
    "EPOCH",
    "DIVERGED",
    "EPOCH_TIME",
    "LABELFREE_TIME",
    "STARTUP_TIME",
    "DEVICE",
    "ONLINE_ACC",
    "LINEAR_ACC",
    "KNN_ACC",
    "REFERENCE_ACC",
    "REFERENCE_CORRECT",
    "EMBED_STD",
    "labelfree_key",
    "LABELFREE_CRITERIA",
    "FEATURE_SPACES",
    "OBJECTIVE",
    "OBJECTIVE_MODE",
    "OBJECTIVE_SOURCE",
    "OBJECTIVE_RESAMPLES",
    "LABELFREE_MODES",
    "label_free_modes",
    "criterion_keys",
    "regularizer_key",
    "reads_labels",
    "scaled_loss",
    "pack_bits",
    "unpack_bits",
    "pack_floats",
    "unpack_floats",
    "CHECKPOINT_FILES",
    "checkpoint_metrics_text",
    "read_checkpoint_metrics",
]

# The training loop, every epoch (means over the epoch's steps and over ranks).
LOSS = "train/loss"
INV = "train/inv"
PROBE_LOSS = "train/probe_loss"  # the online probe's cross-entropy: reads labels
SCALED_LOSS = "train/scaled_loss"  # the paper's λ-corrected loss, loss / λ^α
LR = "train/lr"
EPOCH = "epoch"
# Set (to the reason) in the last report of a run whose loss became NaN or infinite.
DIVERGED = "train/diverged"
EPOCH_TIME = "time/epoch_s"
LABELFREE_TIME = "time/labelfree_s"
# From the start of the run (a sweep's trial, or the process) to its first training step
# (that of the process, after a restart), reported with every epoch.
STARTUP_TIME = "time/startup_s"
# What trained the run (rank 0's device), with every epoch: "cuda: <GPU>", or "cpu (<kernels>):
# <processor>", the instruction set PyTorch's CPU kernels use. On a CPU the same configuration and
# seed train to the last bit alike on one machine, but into another encoder where the kernels differ.
DEVICE = "system/device"

# Labelled monitors and judges.
ONLINE_ACC = "online/acc"  # the online probe on the validation split, every epoch
LINEAR_ACC = "eval/linear_acc"  # logistic regression, train split -> validation split
KNN_ACC = "eval/knn_acc"
# The reference every label-free criterion is judged against: a linear probe cross-validated
# over the labelled images of both splits, so that each image is scored once.
REFERENCE_ACC = "eval/linear_acc_cv"
# Which images that probe got right (a packed bit string), for the sweep's noise ceiling.
REFERENCE_CORRECT = "eval/linear_cv_correct"
EMBED_STD = "eval/embed_std"

# The label-free criteria measured on the fixed evaluation set, on the backbone features and
# on the embeddings (the projector outputs SIGReg acts on): ``labelfree/<space>/<name>``.
FEATURE_SPACES = ("backbone", "embed")
LABELFREE_CRITERIA = ("gmi", "lidar", "rankme", "inv_ratio", "view_nn", "sigreg", "std")


def labelfree_key(space: str, name: str) -> str:
    """``labelfree/backbone/gmi`` and the like."""
    if space not in FEATURE_SPACES or name not in LABELFREE_CRITERIA:
        raise ValueError(f"no label-free criterion {space}/{name}")
    return f"labelfree/{space}/{name}"


# Whether a larger value of each label-free criterion is better.
LABELFREE_MODES = {"gmi": "max", "lidar": "max", "rankme": "max", "inv_ratio": "min", "view_nn": "max", "sigreg": "min", "std": "max"}

# The declared objective: the key Optuna's TPE, ASHA and the final choice all read; it is the
# criterion ``OBJECTIVE_SOURCE`` (a feature space and a criterion's name).
OBJECTIVE = "labelfree/objective"
OBJECTIVE_MODE = "max"
OBJECTIVE_SOURCE = ("backbone", "gmi")
# After the last epoch: the objective on resamples of the label-free images, the same resamples
# in every trial of a sweep (a packed float string), which tell a near-tie at the top.
OBJECTIVE_RESAMPLES = "labelfree/objective_resamples"


def criterion_keys() -> dict[str, str]:
    """The label-free selection criteria by name (``objective``, ``loss``, ``scaled_loss``,
    ``backbone/gmi``...) and the metric key each one reads."""
    keys = {"objective": OBJECTIVE, "loss": LOSS, "scaled_loss": SCALED_LOSS}
    keys.update({f"{s}/{c}": labelfree_key(s, c) for s in FEATURE_SPACES for c in LABELFREE_CRITERIA})
    return keys


def label_free_modes(regularizer: str = "sigreg") -> dict[str, str]:
    """Every label-free metric a search may optimise, with the direction that is better."""
    modes = {LOSS: "min", SCALED_LOSS: "min", INV: "min", regularizer_key(regularizer): "min", OBJECTIVE: OBJECTIVE_MODE}
    modes.update({labelfree_key(s, c): LABELFREE_MODES[c] for s in FEATURE_SPACES for c in LABELFREE_CRITERIA})
    return modes


def regularizer_key(regularizer: str) -> str:
    """``train/sigreg`` or ``train/spectral``: the regulariser's own term."""
    return f"train/{regularizer}"


_LABELLED_PREFIXES = ("eval/", "online/")
_LABELLED_KEYS = (PROBE_LOSS,)


def reads_labels(key: str) -> bool:
    """Whether the metric ``key`` is computed from labels (so may never choose a model)."""
    return key.startswith(_LABELLED_PREFIXES) or key in _LABELLED_KEYS


def scaled_loss(loss: float, lam: float, alpha: float) -> float:
    """The paper's λ-corrected training loss ``loss / λ^α`` (``nan`` for ``λ = 0``)."""
    if not lam > 0:
        return math.nan
    return loss / lam**alpha


def pack_bits(flags: "np.ndarray | list[bool]") -> str:
    """``[True, False, ...]`` -> ``"<n>:<base64 of the packed bits>"`` (a metric value that
    fits a string: 1,797 flags take 304 characters)."""
    flags = np.asarray(flags, dtype=bool)
    return f"{flags.size}:{base64.b64encode(np.packbits(flags).tobytes()).decode('ascii')}"


def unpack_bits(text: str) -> np.ndarray:
    """The inverse of :func:`pack_bits`."""
    size, _, data = text.partition(":")
    return np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8))[: int(size)].astype(bool)


def pack_floats(values: "np.ndarray | list[float]") -> str:
    """``[0.5, 1.25, ...]`` -> the base64 of their float32 bytes (a metric value that fits a
    string: 200 values take 1,068 characters)."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def unpack_floats(text: str) -> np.ndarray:
    """The inverse of :func:`pack_floats` (as float64)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


def objective(values: "dict[str, float]") -> float:
    """The declared label-free objective from the label-free criteria of one measurement
    (higher is better; see :data:`OBJECTIVE`)."""
    return float(values[labelfree_key(*OBJECTIVE_SOURCE)])


# A checkpoint's ``metrics.json`` holds, beside the metrics of its epoch, the size of every other
# file of the checkpoint under this key. Ray uploads a checkpoint's files side by side, so a copy
# cut short (its driver or node died meanwhile) can hold the small ``metrics.json`` whole and a
# model file in part; the sizes tell such a copy from a whole one.
CHECKPOINT_FILES = "checkpoint_files"


def checkpoint_metrics_text(metrics: "dict[str, object]", files: "dict[str, int]") -> str:
    """The text of a checkpoint's ``metrics.json``: ``metrics`` and the sizes of its ``files``."""
    return json.dumps({**metrics, CHECKPOINT_FILES: files}, indent=2)


def read_checkpoint_metrics(text: "str | bytes") -> "tuple[dict[str, object], dict[str, int]]":
    """``(metrics, file sizes)`` of a checkpoint's ``metrics.json`` (no sizes from a checkpoint
    written before they were kept). ``ValueError`` when the text is not whole JSON."""
    metrics = json.loads(text)
    if not isinstance(metrics, dict) or not isinstance(metrics.get(CHECKPOINT_FILES, {}), dict):
        raise ValueError("a checkpoint's metrics.json holds one JSON object, its files' sizes one too")
    files = metrics.pop(CHECKPOINT_FILES, None) or {}
    return metrics, {str(k): int(v) for k, v in files.items()}
