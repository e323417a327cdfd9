"""SIGReg, invariance and the LeJEPA loss: against an independent float64 reference, on
collapsed and Gaussian input, and under DDP (2 gloo processes == 1 process, value and gradient)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from lejepa_tune.losses import LeJEPALoss, SIGReg, SpectralRegularizer, invariance
from lejepa_tune.models import Projector


def reference_sigreg(proj: np.ndarray, directions: np.ndarray, t_max: float, num_knots: int) -> float:
    """Written from the formula, in float64, independently of the module: the complex
    empirical characteristic function against exp(-t²/2), weighted by exp(-t²/2), integrated
    by the trapezoid rule over the *symmetric* interval [-t_max, t_max] with the same spacing,
    times N, averaged over slices and views."""
    v, n, _ = proj.shape
    t = np.linspace(-t_max, t_max, 2 * num_knots - 1)
    x = proj @ directions  # (V, N, S)
    ecf = np.exp(1j * x[..., None] * t).mean(axis=1)  # (V, S, T)
    gauss = np.exp(-(t**2) / 2)
    integrand = np.abs(ecf - gauss) ** 2 * gauss
    return float((n * np.trapezoid(integrand, t, axis=-1)).mean())


@pytest.mark.parametrize("shape", [(1, 64, 8), (3, 100, 16), (2, 33, 5)])
@pytest.mark.parametrize("num_knots,t_max", [(17, 3.0), (9, 2.0), (33, 5.0)])
def test_sigreg_matches_float64_reference(shape, num_knots, t_max):
    gen = torch.Generator().manual_seed(1)
    proj = torch.randn(*shape, generator=gen) * 1.3 + 0.2
    sigreg = SIGReg(num_slices=64, num_knots=num_knots, t_max=t_max)
    got = sigreg(proj, step=7).item()
    a = sigreg.directions(shape[-1], step=7).double().numpy()
    want = reference_sigreg(proj.double().numpy(), a, t_max, num_knots)
    assert got == pytest.approx(want, rel=1e-5)


def test_sigreg_is_averaged_per_view_not_flattened():
    gen = torch.Generator().manual_seed(2)
    # Two views with different means: each is off-centre, their union is wider still.
    proj = torch.stack([torch.randn(128, 8, generator=gen) + 1.0, torch.randn(128, 8, generator=gen) - 1.0])
    sigreg = SIGReg(num_slices=32)
    per_view = [sigreg(proj[i : i + 1], step=0).item() for i in range(2)]
    assert sigreg(proj, step=0).item() == pytest.approx(sum(per_view) / 2, rel=1e-6)
    flattened = sigreg(proj.reshape(1, 256, 8), step=0).item()
    assert abs(flattened - sum(per_view) / 2) > 1.0


def test_sigreg_of_collapsed_input_is_exact():
    n, k, t_max, knots = 50, 6, 3.0, 17
    sigreg = SIGReg(num_slices=16, num_knots=knots, t_max=t_max)
    # All points at 0: every slice is 0, the ECF is 1, so the statistic is
    # N · ∫ (1 - e^{-t²/2})² e^{-t²/2} dt with the module's quadrature.
    t = np.linspace(0.0, t_max, knots)
    dt = t_max / (knots - 1)
    w = np.full(knots, 2 * dt)
    w[[0, -1]] = dt
    expected = n * float(np.sum(w * np.exp(-(t**2) / 2) * (1 - np.exp(-(t**2) / 2)) ** 2))
    assert sigreg(torch.zeros(1, n, k), step=0).item() == pytest.approx(expected, rel=1e-6)
    # The same collapse anywhere else is at least as bad: the ECF then also rotates.
    assert sigreg(torch.full((1, n, k), 0.7), step=0).item() >= expected * 0.99


def test_sigreg_scaling_with_n_gaussian_vs_not():
    sigreg = SIGReg(num_slices=256)
    gen = torch.Generator().manual_seed(3)
    gauss, uniform = [], []
    for n in (256, 1024, 4096):
        stats_g = [sigreg(torch.randn(1, n, 16, generator=gen), step=s).item() for s in range(4)]
        stats_u = [sigreg((torch.rand(1, n, 16, generator=gen) - 0.5) * math.sqrt(12) * 1.5, step=s).item() for s in range(4)]
        gauss.append(np.mean(stats_g))
        uniform.append(np.mean(stats_u))
    # Gaussian input: O(1) whatever N (its expectation does not depend on N).
    assert max(gauss) < 3.0 and max(gauss) / min(gauss) < 3.0
    # Non-Gaussian input: grows linearly with N (x4 per step here).
    assert uniform[1] / uniform[0] == pytest.approx(4.0, rel=0.25)
    assert uniform[2] / uniform[1] == pytest.approx(4.0, rel=0.25)
    assert uniform[0] > 10 * max(gauss)


def test_sigreg_directions_are_unit_deterministic_and_change_per_step():
    sigreg = SIGReg(num_slices=32)
    a0, a0_again, a1 = sigreg.directions(8, 0), sigreg.directions(8, 0), sigreg.directions(8, 1)
    assert a0.shape == (8, 32)
    torch.testing.assert_close(a0.norm(dim=0), torch.ones(32))
    assert torch.equal(a0, a0_again)
    assert not torch.allclose(a0, a1)


def test_sigreg_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(V, N, K\)"):
        SIGReg()(torch.randn(10, 4), step=0)


def test_invariance_centre_is_mean_of_global_views():
    proj = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]], [[5.0, 2.0]]])  # (V=3, N=1, K=2)
    # Global views 0 and 1: centre (2, 0). Squared distances: 1, 1, 9 + 4. Mean over V and K.
    assert invariance(proj, n_global=2).item() == pytest.approx((1 + 1 + 13) / (3 * 2))
    # Without local views the centre is the mean of all views: (3, 2/3).
    assert invariance(proj, n_global=3).item() == pytest.approx(((4 + 4 / 9) + (0 + 4 / 9) + (4 + 16 / 9)) / 6)


class _ConstantRegularizer(torch.nn.Module):
    """A regulariser of value 2 that records the steps it is called at."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def forward(self, proj, step):
        self.steps.append(step)
        return proj.new_tensor(2.0)


def test_lejepa_loss_weighs_invariance_of_the_global_centre_against_the_regularizer():
    # (V=3, N=2, K=1), global views 0 and 1: centre (1, 3); squared distances 1, 1 | 1, 1 | 0, 4.
    proj = torch.tensor([[[0.0], [2.0]], [[2.0], [4.0]], [[1.0], [1.0]]])
    reg = _ConstantRegularizer()
    out = LeJEPALoss(0.25, reg, n_global=2)(proj, step=5)
    assert out.invariance.item() == pytest.approx(8 / 6)
    assert out.loss.item() == pytest.approx(0.75 * 8 / 6 + 0.25 * 2.0)
    assert reg.steps == [5]  # SIGReg's slices are drawn per step
    for lam in (1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="lam must be in"):
            LeJEPALoss(lam, reg, n_global=2)


def test_spectral_regularizer_is_zero_for_white_and_log_r_for_collapse():
    spectral = SpectralRegularizer()
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    white = (q - q.mean(0)).float().unsqueeze(0)  # equal singular values (up to centring)
    assert spectral(white).item() < 0.05
    rank1 = torch.randn(64, 1) @ torch.randn(1, 8)
    assert spectral(rank1.unsqueeze(0)).item() == pytest.approx(math.log(8), rel=1e-3)


# ----------------------------------------------------------------------------------------------
# Distributed equivalence: 2 gloo processes vs 1 process on the concatenated batch.

N_PER_RANK, IN_DIM, V_GLOBAL, V_LOCAL = 12, 10, 2, 1


class _TinyEncoder(nn.Module):
    """A linear 'backbone' and the real projector (with its global-batch BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(IN_DIM, 24)
        self.projector = Projector(24, [32], 8)

    def forward(self, views):  # (V, N, IN_DIM) -> (V, N, 8)
        v, n = views.shape[:2]
        return self.projector(self.backbone(views.flatten(0, 1))).reshape(v, n, -1)


def _make_problem():
    torch.manual_seed(0)
    model = _TinyEncoder()
    views = torch.randn(V_GLOBAL + V_LOCAL, 2 * N_PER_RANK, IN_DIM) * 1.5
    return model, views


def _loss_fn(regularizer: str):
    reg = SIGReg(num_slices=48, seed=0) if regularizer == "sigreg" else SpectralRegularizer()
    return LeJEPALoss(0.4, reg, n_global=V_GLOBAL)


def _single_process(regularizer: str, step: int):
    model, views = _make_problem()
    out = _loss_fn(regularizer)(model(views), step)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.loss.item(), out.regularizer.item(), grads


def _rank_losses(step: int) -> dict:
    """This rank's half of the batch through DDP, with each regulariser."""
    rank = dist.get_rank()
    results = {}
    for regularizer in REGULARIZERS:
        model, views = _make_problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        local = views[:, rank * N_PER_RANK : (rank + 1) * N_PER_RANK]
        loss_fn = _loss_fn(regularizer)
        out = loss_fn(ddp(local), step)
        out.loss.backward()  # DDP averages the parameter gradients over ranks
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)  # the reported loss: the mean over ranks
        results[regularizer] = {
            "loss": loss.item() / 2,
            "local_loss": out.loss.item(),
            "regularizer": out.regularizer.item(),
            "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
        }
    results["directions"] = SIGReg(num_slices=48, seed=0).directions(8, step)
    return results


REGULARIZERS = ("sigreg", "spectral")
STEP = 11


@pytest.fixture(scope="module")
def two_ranks(gloo_ranks):
    return gloo_ranks.run(_rank_losses, STEP)


def test_sigreg_draws_the_same_slices_on_every_rank(two_ranks):
    assert torch.equal(two_ranks[0]["directions"], two_ranks[1]["directions"])


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_two_gloo_processes_equal_one_process_on_the_whole_batch(two_ranks, regularizer):
    ranks = [r[regularizer] for r in two_ranks]
    loss, reg, grads = _single_process(regularizer, STEP)
    # The regulariser is a global quantity: every rank computes the same value, the whole batch's.
    for r in ranks:
        assert r["regularizer"] == pytest.approx(reg, rel=1e-5, abs=1e-6)
    # The invariance is per rank, so the local losses differ; their mean is the global loss.
    assert ranks[0]["local_loss"] != pytest.approx(ranks[1]["local_loss"], rel=1e-6)
    assert ranks[0]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for name, g in grads.items():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
