"""Frozen-feature evaluation: feature extraction, linear probe, kNN and RankMe.

Pure functions on tensors; nothing here reads a config. The labelled metrics
(:func:`linear_probe_accuracy`, :func:`knn_accuracy`) are the ground truth a label-free
selection criterion is judged against; :func:`rankme` is itself a label-free criterion.

A collapsed or diverged encoder must not crash an evaluation, because a sweep is exactly where
such encoders appear. The labelled metrics therefore treat non-finite feature values as 0 (a
NaN encoder scores like a collapsed one: about the accuracy of a constant predictor), while
:func:`rankme` returns ``nan`` for non-finite input so that the selection code can flag the
trial as diverged.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "extract_features",
    "linear_probe_accuracy",
    "knn_accuracy",
    "rankme",
]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Iterable,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Embed every ``(images, labels)`` batch of ``loader`` with ``encoder`` in eval mode.

    Args:
        encoder: maps images ``(B, C, H, W)`` (or any batch tensor) to features ``(B, D)``.
        loader: iterable of ``(images, labels)``; ``labels`` is anything ``torch.as_tensor``
            accepts, of length ``B``.
        device: where the forward pass runs; ``encoder`` must already be on it.
        autocast_dtype: if set (e.g. ``torch.bfloat16`` on CUDA), the forward runs under
            ``torch.autocast(device.type, dtype=autocast_dtype)``. Leave ``None`` on CPU, where
            bf16 autocast is far slower than fp32.

    Returns:
        ``features`` float32 ``(N, D)`` and ``labels`` int64 ``(N,)``, both on the CPU.

    The train/eval flag of every submodule is restored afterwards, not just the top-level one,
    so an encoder with deliberately frozen (eval-mode) BatchNorm layers comes back unchanged.
    """
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    features: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with autocast:
                out = encoder(images)
            if not isinstance(out, Tensor) or out.ndim != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"encoder must return a (B, D) tensor, got {shape}")
            features.append(out.float().cpu())
            labels.append(torch.as_tensor(targets).long().reshape(-1).cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
    if not features:
        raise ValueError("loader yielded no batches")
    feats, labs = torch.cat(features), torch.cat(labels)
    if feats.shape[0] != labs.shape[0]:
        raise ValueError(f"got {feats.shape[0]} feature rows but {labs.shape[0]} labels")
    return feats, labs


def _check_split(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name}_x must be (N, D), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}_y must be (N,) with N = {x.shape[0]}, got shape {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}_x is empty")


def _finite(x: Tensor) -> Tensor:
    # A diverged encoder emits NaN/inf; zeroing them makes it score like a collapsed one.
    return torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Top-1 accuracy in [0, 1] of a linear classifier fit on frozen train features.

    ``StandardScaler`` (fit on ``train_x`` only) followed by a multinomial
    ``LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter)``.

    Args:
        train_x: ``(N_train, D)`` features; train_y: ``(N_train,)`` integer labels.
        val_x: ``(N_val, D)`` features; val_y: ``(N_val,)`` integer labels.

    Degenerate inputs do not crash: constant columns get unit scale from the scaler (so they
    become all-zero), a fully collapsed matrix leaves only the intercept, i.e. the
    majority-class predictor; a single training class predicts that class. Not converging in
    ``max_iter`` steps is expected on hard features and its warning is silenced; any other
    warning or error propagates.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    _check_split(train_x, train_y, "train")
    _check_split(val_x, val_y, "val")
    if train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"feature dims differ: train {train_x.shape[1]}, val {val_x.shape[1]}")
    xtr = _finite(train_x).double().cpu().numpy()
    xva = _finite(val_x).double().cpu().numpy()
    ytr = train_y.cpu().numpy().astype(np.int64)
    yva = val_y.cpu().numpy().astype(np.int64)

    classes = np.unique(ytr)
    if classes.size < 2:
        # LogisticRegression refuses one class; the only sensible classifier predicts it.
        return float(np.mean(yva == classes[0]))

    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(xtr), ytr)
    return float(np.mean(clf.predict(scaler.transform(xva)) == yva))


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of a weighted cosine-similarity kNN classifier (DINO's eval).

    Features are L2-normalised, so ``s = val @ train.T`` is the cosine similarity. Each val
    row takes its ``k`` most similar train rows; neighbour ``j`` votes for its label with
    weight ``exp(s_j / temperature)``, and the class with the largest summed weight wins. A
    small temperature makes the nearest neighbours dominate; ``temperature -> inf`` is a plain
    majority vote. ``k`` is clamped to ``N_train``.

    Args:
        train_x: ``(N_train, D)``; train_y: ``(N_train,)`` labels in ``[0, num_classes)``.
        val_x: ``(N_val, D)``; val_y: ``(N_val,)``.
        num_classes: defaults to ``1 + max label`` over both splits.
        chunk_size: val rows per similarity block; memory is ``O(chunk_size * N_train)``.

    Computed on the device of ``train_x``. Zero rows (a collapsed encoder) stay zero after
    normalisation, so all similarities tie and the vote is about chance.
    """
    _check_split(train_x, train_y, "train")
    _check_split(val_x, val_y, "val")
    if train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"feature dims differ: train {train_x.shape[1]}, val {val_x.shape[1]}")
    if k < 1 or chunk_size < 1 or not temperature > 0:
        raise ValueError(
            f"need k >= 1, chunk_size >= 1, temperature > 0; "
            f"got k={k}, chunk_size={chunk_size}, temperature={temperature}"
        )

    device = train_x.device
    train = F.normalize(_finite(train_x), dim=1)  # (N_train, D)
    val = F.normalize(_finite(val_x), dim=1).to(device)  # (N_val, D)
    train_y = train_y.to(device).long()
    val_y = val_y.to(device).long()
    if num_classes is None:
        num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    k = min(k, train.shape[0])

    correct = 0
    for start in range(0, val.shape[0], chunk_size):
        block = val[start : start + chunk_size]  # (B, D)
        sim, idx = (block @ train.T).topk(k, dim=1)  # (B, k)
        weights = (sim / temperature).exp()  # (B, k)
        votes = torch.zeros(block.shape[0], num_classes, device=device)  # (B, C)
        votes.scatter_add_(1, train_y[idx], weights)
        correct += (votes.argmax(dim=1) == val_y[start : start + chunk_size]).sum().item()
    return correct / val.shape[0]


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): the effective rank of a feature matrix.

    With ``σ`` the singular values of ``features`` ``(N, D)`` (computed in float64),
    ``p = σ / Σσ + eps`` and ``rankme = exp(-Σ p log p)``. It is about 1 for a rank-1 matrix,
    about ``min(N, D)`` for isotropic Gaussian features, and invariant to scaling.

    An all-zero matrix (fully collapsed encoder) returns about 1, the minimum; a matrix with
    NaN/inf entries (diverged encoder) returns ``nan``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    x = features.detach().double()
    if not torch.isfinite(x).all():
        return math.nan
    sigma = torch.linalg.svdvals(x)  # (min(N, D),)
    total = sigma.sum()
    p = (sigma / total if total > 0 else torch.zeros_like(sigma)) + eps
    return float(torch.exp(-(p * p.log()).sum()))
