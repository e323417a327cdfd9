"""Frozen-feature evaluation: feature extraction, linear probes, kNN, and the label-free
criteria measured on views of a fixed set of images.

Pure functions on tensors; nothing here reads a config. The labelled metrics
(:func:`linear_probe_accuracy`, :func:`cross_validated_probe`, :func:`knn_accuracy`) are the
ground truth a label-free criterion is judged against. The label-free criteria
(:func:`labelfree_criteria`) take the features of ``q`` views of ``M`` images, ``(M, q, D)``,
and never see a label.

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
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

__all__ = [
    "extract_features",
    "linear_probe_accuracy",
    "cross_validated_probe",
    "knn_accuracy",
    "rankme",
    "view_covariances",
    "gaussian_mi",
    "lidar",
    "invariance_ratio",
    "view_nn_accuracy",
    "sigreg_distance",
    "labelfree_criteria",
]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches: Iterable[Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Embeds every batch of ``batches`` with ``encoder`` in eval mode.

    Args:
        encoder: maps a batch ``(B, ...)`` to features ``(B, D)``.
        batches: iterable of input tensors (images ``(B, C, H, W)``, or features).
        device: where the forward pass runs; ``encoder`` must already be on it.
        autocast_dtype: if set (``torch.bfloat16`` on CUDA), the forward runs under autocast.
            Leave ``None`` on CPU, where bf16 autocast is far slower than fp32.

    Returns:
        ``features`` float32 ``(N, D)`` on the CPU.

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
    try:
        for x in batches:
            with autocast:
                out = encoder(x.to(device, non_blocking=True))
            if not isinstance(out, Tensor) or out.ndim != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"encoder must return a (B, D) tensor, got {shape}")
            features.append(out.float().cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
    if not features:
        raise ValueError("no batches to embed")
    return torch.cat(features)


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
    with warnings.catch_warnings(), _sklearn_threads():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(xtr), ytr)
    return float(np.mean(clf.predict(scaler.transform(xva)) == yva))


def _sklearn_threads():
    """scikit-learn's OpenMP and BLAS threads, as many as torch uses in this process (one per
    reserved CPU under Ray). More threads than cores, or cores shared with another trial, make
    OpenMP threads spin-wait on each other: a probe fit went from 6 ms to 0.5 s that way."""
    return threadpool_limits(limits=torch.get_num_threads())


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


def cross_validated_probe(
    x: Tensor, y: Tensor, folds: int = 5, seed: int = 0, max_iter: int = 1000
) -> tuple[float, Tensor]:
    """The accuracy of :func:`linear_probe_accuracy`'s classifier cross-validated over
    ``(x (N, D), y (N,))`` in ``folds`` stratified, seeded folds, and which items it got right
    (``bool (N,)``): every item is predicted once, by the probe trained on the other folds.

    Scored on all ``N`` items instead of one held-out split, its standard error is
    ``sqrt(N_val / N)`` times that of a single split's accuracy.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    _check_split(x, y, "x")
    xs = _finite(x).double().cpu().numpy()
    ys = y.cpu().numpy().astype(np.int64)
    counts = np.bincount(ys)
    folds = max(2, min(folds, int(counts[counts > 0].min())))  # every fold holds every class
    correct = np.zeros(ys.size, dtype=bool)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with a single item cannot be stratified: fine
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(xs, ys))
    for train_idx, test_idx in splits:
        classes = np.unique(ys[train_idx])
        if classes.size < 2:
            correct[test_idx] = ys[test_idx] == classes[0]
            continue
        scaler = StandardScaler().fit(xs[train_idx])
        clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(), _sklearn_threads():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(scaler.transform(xs[train_idx]), ys[train_idx])
        correct[test_idx] = clf.predict(scaler.transform(xs[test_idx])) == ys[test_idx]
    return float(correct.mean()), torch.from_numpy(correct)


# ----------------------------------------------------------------------------------------------
# Label-free criteria on the features of q views of M images, ``(M, q, D)``.
#
# With f_iv the features of view v of image i and m_i the mean over its views:
#   within  Σ_w = Σ_iv (f_iv - m_i)(f_iv - m_i)ᵀ / (M (q - 1))   augmentation noise;
#   between Σ_b = Σ_i (m_i - m)(m_i - m)ᵀ / (M - 1)              spread of the image means.
# Σ_b also holds Σ_w / q of noise (a mean of q noisy views), so Σ_s = Σ_b - Σ_w / q estimates
# the covariance of what the images themselves contribute: the signal.


def _check_views(feats: Tensor) -> Tensor:
    if feats.ndim != 3 or feats.shape[0] < 3 or feats.shape[1] < 2 or feats.shape[2] < 1:
        raise ValueError(f"expected view features (M >= 3, q >= 2, D), got shape {tuple(feats.shape)}")
    return feats.detach().double().cpu()


def view_covariances(feats: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ_w, Σ_b)``, both ``(D, D)`` float64, of view features ``(M, q, D)`` (see above)."""
    f = _check_views(feats)
    m, q, _ = f.shape
    means = f.mean(1)  # (M, D)
    dev = (f - means[:, None]).reshape(m * q, -1)
    within = dev.T @ dev / (m * (q - 1))
    centred = means - means.mean(0)
    between = centred.T @ centred / (m - 1)
    return within, between


def _whitened_eigenvalues(within: Tensor, other: Tensor, eps: float) -> Tensor:
    """Eigenvalues of ``(Σ_w + δI)^{-1/2} other (Σ_w + δI)^{-1/2}``, ``δ = eps · tr(Σ_w) / D``
    (relative, so that the result does not depend on the features' scale)."""
    d = within.shape[0]
    delta = eps * float(torch.trace(within)) / d
    if not delta > 0:
        return torch.full((d,), math.nan, dtype=torch.float64)
    chol = torch.linalg.cholesky(within + delta * torch.eye(d, dtype=within.dtype))
    inner = torch.linalg.solve_triangular(chol, other, upper=False)
    inner = torch.linalg.solve_triangular(chol, inner.T, upper=False)  # L⁻¹ other L⁻ᵀ
    return torch.linalg.eigvalsh((inner + inner.T) / 2)


def gaussian_mi(feats: Tensor, eps: float = 1e-3) -> float:
    """``½ Σ log(1 + μᵢ)`` (nats) over the eigenvalues ``μᵢ >= 0`` of ``Σ_w^{-1/2} Σ_s Σ_w^{-1/2}``:
    the information one view carries about which image it shows, if signal and augmentation
    noise were Gaussian. High when many directions separate images far more than views of
    one image differ. Invariant to scale and rotation of the features, and to any invertible
    linear map up to the small ridge ``eps`` added to ``Σ_w`` (relative to its mean eigenvalue)."""
    within, between = view_covariances(feats)
    q = feats.shape[1]
    mu = _whitened_eigenvalues(within, between - within / q, eps).clamp_min(0.0)
    return float(0.5 * torch.log1p(mu).sum())


def lidar(feats: Tensor, eps: float = 1e-3, floor: float = 1e-7) -> float:
    """LiDAR (Thilak et al., ICLR 2024): the effective rank ``exp(H(p))``, ``p = λ / Σλ``, of
    the eigenvalues ``λ`` of ``Σ_w^{-1/2} Σ_b Σ_w^{-1/2}``."""
    within, between = view_covariances(feats)
    lam = _whitened_eigenvalues(within, between, eps).clamp_min(0.0)
    total = float(lam.sum())
    if not total > 0:
        return math.nan
    p = lam / total + floor
    return float(torch.exp(-(p * p.log()).sum()))


def invariance_ratio(feats: Tensor) -> float:
    """The share of the views' variance that is within images: ``tr(W) / tr(W + B)`` with the
    population within- and between-image covariances. 0 when views of an image coincide, 1
    when images are indistinguishable; unlike raw invariance, collapse does not lower it."""
    f = _check_views(feats)
    means = f.mean(1)
    within = (f - means[:, None]).square().sum(-1).mean()
    total = (f - f.mean((0, 1))).square().sum(-1).mean()
    return float(within / total) if total > 0 else math.nan


def view_nn_accuracy(feats: Tensor) -> float:
    """How often the nearest neighbour (cosine, on standardised features) of a view, among
    all other views, is a view of the same image."""
    f = _check_views(feats)
    m, q, d = f.shape
    flat = f.reshape(m * q, d)
    flat = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-12)
    flat = F.normalize(flat, dim=1)
    sim = flat @ flat.T
    sim.fill_diagonal_(-math.inf)
    image = torch.arange(m).repeat_interleave(q)
    return float((image[sim.argmax(1)] == image).double().mean())


def sigreg_distance(feats: Tensor, num_slices: int = 64, num_knots: int = 17, t_max: float = 3.0, seed: int = 0) -> float:
    """The per-sample, debiased SIGReg statistic of each view's ``(M, D)`` sample: the
    weighted squared distance between the empirical characteristic function of every slice and
    ``N(0, 1)``'s, with ``|φ̂|²`` replaced by its unbiased estimate ``(M|φ̂|² - 1) / (M - 1)``,
    averaged over slices and views. About 0 for Gaussian embeddings whatever ``M``; training's
    SIGReg is ``M`` times the biased form. Fixed directions (``seed``) for every call."""
    f = _check_views(feats)
    m, q, d = f.shape
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, num_slices, generator=gen, dtype=torch.float64)
    a = a / a.norm(dim=0)
    t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    dt = t_max / (num_knots - 1)
    trapezoid = torch.full((num_knots,), 2.0 * dt, dtype=torch.float64)
    trapezoid[[0, -1]] = dt
    phi = torch.exp(-t.square() / 2)
    # cos/sin in float32 (the cost of this criterion), their means in float64.
    x_t = ((f.transpose(0, 1) @ a).unsqueeze(-1) * t).float()  # (q, M, S, T)
    c, s = x_t.cos().double().mean(1), x_t.sin().double().mean(1)  # (q, S, T)
    power = (m * (c.square() + s.square()) - 1) / (m - 1)  # unbiased |φ̂|²
    err = power - 2 * phi * c + phi.square()
    return float((err @ (trapezoid * phi)).mean())


# Every label-free criterion of view features, by name, in the order of
# :data:`lejepa_tune.metrics.LABELFREE_CRITERIA`.
_CRITERIA: dict[str, Callable[[Tensor], float]] = {
    "gmi": gaussian_mi,
    "lidar": lidar,
    "rankme": lambda f: rankme(f.reshape(-1, f.shape[-1])),
    "inv_ratio": invariance_ratio,
    "view_nn": view_nn_accuracy,
    "sigreg": sigreg_distance,
    # Scale-bearing, unlike the rest: about 0 when the features collapse to a point.
    "std": lambda f: float(f.reshape(-1, f.shape[-1]).std(0).mean()),
}


def labelfree_criteria(feats: Tensor, names: Sequence[str] | None = None) -> dict[str, float]:
    """The label-free criteria of view features ``(M, q, D)``, by name (see
    :data:`lejepa_tune.metrics.LABELFREE_CRITERIA`): every one, or only ``names``. ``nan`` where
    one is undefined (e.g. non-finite features of a diverged encoder)."""
    f = _check_views(feats)
    names = tuple(_CRITERIA) if names is None else tuple(names)
    if not torch.isfinite(f).all():
        return dict.fromkeys(names, math.nan)
    return {name: _CRITERIA[name](f) for name in names}
