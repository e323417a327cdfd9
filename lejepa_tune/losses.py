"""The LeJEPA objective: ``loss = (1 - lam) * invariance + lam * SIGReg``.

Every module here is a plain ``nn.Module`` that is correct under DDP as well as in one process:

* :class:`SIGReg` is the sliced Epps-Pulley test of the LeJEPA paper (Balestriero & LeCun,
  arXiv 2511.08544). Under ``torch.distributed`` the empirical characteristic function is
  summed over ranks with the *autograd-aware* all-reduce (its return value is used), every rank
  draws the same slicing directions (seeded from the global step, which all ranks share), and
  ``N`` is the global batch. Two processes therefore compute exactly the loss, and after DDP's
  gradient averaging exactly the gradient, of one process holding the concatenated batch.
* :func:`invariance` pulls every view to the centre of the global views.
* :class:`SpectralRegularizer` is an *alternative* (KL of the normalised singular values from
  uniform) found in other descriptions of LeJEPA. It is not SIGReg and never the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .distributed import autograd_all_gather, autograd_all_reduce, world_size

__all__ = [
    "SIGReg",
    "SpectralRegularizer",
    "invariance",
    "LeJEPALoss",
    "LeJEPALossOutput",
]


def _check_views(proj: Tensor, name: str) -> None:
    if proj.dim() != 3:
        raise ValueError(f"{name} expects projections of shape (V, N, K), got {tuple(proj.shape)}")
    if proj.size(0) < 1 or proj.size(1) < 1 or proj.size(2) < 1:
        raise ValueError(f"{name} got an empty dimension in shape {tuple(proj.shape)}")


class SIGReg(nn.Module):
    """Sketched Isotropic Gaussian Regularisation: the sliced Epps-Pulley statistic.

    For projections ``z`` of one view, shape ``(N, K)``, and ``S`` random unit directions
    ``A (K, S)``, each slice ``x = z @ a`` is compared with the standard normal through the
    characteristic function on ``t`` in ``[0, t_max]``::

        stat(x) = N * sum_t w_t * ((mean_n cos(t x_n) - exp(-t²/2))² + (mean_n sin(t x_n))²)

    The integrand is even in ``t``, so integrating over ``[0, t_max]`` with doubled trapezoid
    weights equals the symmetric integral over ``[-t_max, t_max]``; ``w_t`` also carries the
    window ``exp(-t²/2)``. The loss is the mean over slices and over views: SIGReg is computed
    for each view separately (flattening the views into one sample is another objective).

    Under a Gaussian ``z`` the statistic is O(1) whatever ``N``; for any other distribution
    it grows linearly with ``N``.
    """

    def __init__(self, num_slices: int = 256, num_knots: int = 17, t_max: float = 3.0, seed: int = 0):
        super().__init__()
        if num_slices < 1 or num_knots < 2 or t_max <= 0:
            raise ValueError(f"SIGReg needs num_slices >= 1, num_knots >= 2, t_max > 0; got {num_slices}, {num_knots}, {t_max}")
        self.num_slices = num_slices
        self.seed = seed
        t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
        dt = t_max / (num_knots - 1)
        trapezoid = torch.full((num_knots,), 2.0 * dt, dtype=torch.float64)
        trapezoid[[0, -1]] = dt  # the ends of the doubled trapezoid rule
        window = torch.exp(-t.square() / 2.0)
        self.register_buffer("t", t.float(), persistent=False)
        self.register_buffer("phi", window.float(), persistent=False)  # the N(0, 1) characteristic function
        self.register_buffer("weights", (trapezoid * window).float(), persistent=False)

    def directions(self, dim: int, step: int, device: torch.device | str = "cpu") -> Tensor:
        """The unit slicing directions ``(dim, num_slices)`` for ``step``.

        Drawn on the CPU from a generator seeded by ``(seed, step)``, so every rank, and every
        device type, gets the same directions at the same step; a new set every step.
        """
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed * 1_000_003 + int(step))
        a = torch.randn(dim, self.num_slices, generator=gen)
        return (a / a.norm(p=2, dim=0)).to(device)

    def forward(self, proj: Tensor, step: int) -> Tensor:
        """``proj``: ``(V, N, K)`` projections of V views of the local batch; returns a scalar.

        ``step`` must be the same on every rank (the global optimisation step).
        """
        _check_views(proj, "SIGReg")
        _, n, k = proj.shape
        a = self.directions(k, step, proj.device)
        # fp32 even under bf16 autocast: cos/sin of t·x need more than bf16's 8 mantissa bits.
        with torch.autocast(device_type=proj.device.type, enabled=False):
            x_t = (proj.float() @ a).unsqueeze(-1) * self.t  # (V, N, S, T)
            # Sums, not means, so that ranks holding different batch sizes combine exactly.
            sums = torch.stack([x_t.cos().sum(1), x_t.sin().sum(1)])  # (2, V, S, T)
            count = torch.tensor(float(n), device=proj.device)
            if world_size() > 1:
                # The autograd-aware collective returns a new tensor (the in-place c10d one
                # would leave `sums` per-rank); its backward all-reduces the gradient, which
                # DDP's averaging over ranks then turns into the exact gradient.
                sums = autograd_all_reduce(sums)
                count = autograd_all_reduce(count)
            cos_mean, sin_mean = sums[0] / count, sums[1] / count  # (V, S, T)
            err = (cos_mean - self.phi).square() + sin_mean.square()  # (V, S, T)
            statistic = (err @ self.weights) * count  # (V, S): N is the global batch
        return statistic.mean()


class SpectralRegularizer(nn.Module):
    """*Not* SIGReg: KL divergence of the normalised singular values of each view's centred
    projections from the uniform distribution, ``sum_i p_i log(p_i · r)`` with
    ``p = σ / Σσ`` over the ``r = min(N, K)`` singular values, averaged over views.

    Zero when all directions carry equal energy; ``log r`` at full collapse. Under DDP the
    projections are all-gathered (autograd-aware) so the spectrum is the global batch's.
    """

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, proj: Tensor, step: int | None = None) -> Tensor:
        _check_views(proj, "SpectralRegularizer")
        if world_size() > 1:
            proj = torch.cat(autograd_all_gather(proj), dim=1)  # (V, N_global, K)
        with torch.autocast(device_type=proj.device.type, enabled=False):
            z = proj.float() - proj.float().mean(dim=1, keepdim=True)
            s = torch.linalg.svdvals(z)  # (V, r)
            p = s / (s.sum(dim=-1, keepdim=True) + self.eps)
            r = s.size(-1)
            kl = (p * torch.log(p * r + self.eps)).sum(-1)  # (V,)
        return kl.mean()


def invariance(proj: Tensor, n_global: int) -> Tensor:
    """Mean squared distance of every view to the centre of the global views.

    ``proj``: ``(V, N, K)`` with the ``n_global`` global views first. The centre is the mean
    of the global views' projections (``(N, K)``); the result is the mean over views, samples
    and coordinates of ``(z_v - centre)²``, i.e. ``‖z_v - centre‖² / K``, the normalisation of
    the official code, so that the paper's values of λ carry over.
    """
    _check_views(proj, "invariance")
    if not 1 <= n_global <= proj.size(0):
        raise ValueError(f"n_global must be in [1, {proj.size(0)}], got {n_global}")
    # fp32 even under bf16 autocast: the loss and the metrics made from it must not be
    # quantised to bf16's 8 mantissa bits.
    with torch.autocast(device_type=proj.device.type, enabled=False):
        z = proj.float()
        centre = z[:n_global].mean(dim=0)  # (N, K)
        return (z - centre).square().mean()


@dataclass(frozen=True)
class LeJEPALossOutput:
    loss: Tensor
    invariance: Tensor
    regularizer: Tensor


class LeJEPALoss(nn.Module):
    """``loss = (1 - lam) * invariance + lam * regularizer`` on ``(V, N, K)`` projections."""

    def __init__(self, lam: float, regularizer: nn.Module, n_global: int):
        super().__init__()
        if not 0.0 <= lam <= 1.0:  # nan too
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam = lam
        self.regularizer = regularizer
        self.n_global = n_global

    def forward(self, proj: Tensor, step: int) -> LeJEPALossOutput:
        inv = invariance(proj, self.n_global)
        reg = self.regularizer(proj, step)
        return LeJEPALossOutput(loss=(1.0 - self.lam) * inv + self.lam * reg, invariance=inv, regularizer=reg)
