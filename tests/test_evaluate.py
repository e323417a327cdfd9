"""Tests for lejepa_tune.evaluate: probes on synthetic features, the reference probe, feature
extraction, and the label-free criteria on synthetic views with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from lejepa_tune.evaluate import (
    cross_validated_probe,
    extract_features,
    gaussian_mi,
    invariance_ratio,
    knn_accuracy,
    labelfree_criteria,
    lidar,
    linear_probe_accuracy,
    rankme,
    sigreg_distance,
    view_nn_accuracy,
)


def clusters(n_per_class: int, num_classes: int = 4, dim: int = 16, seed: int = 0):
    """Well-separated Gaussian blobs: features (C * n, dim), labels (C * n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.eye(num_classes, dim)  # pairwise distance ~14 vs noise std 1
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


@pytest.fixture(scope="module")
def separable():
    train_x, train_y = clusters(50, seed=0)
    val_x, val_y = clusters(25, seed=1)
    return train_x, train_y, val_x, val_y


@pytest.fixture(scope="module")
def random_labels():
    # Pure noise features with labels independent of them: nothing to learn, chance = 0.25.
    g = torch.Generator().manual_seed(2)
    train_x, val_x = torch.randn(400, 16, generator=g), torch.randn(800, 16, generator=g)
    train_y = torch.randint(0, 4, (400,), generator=g)
    val_y = torch.randint(0, 4, (800,), generator=g)
    return train_x, train_y, val_x, val_y


def imbalanced_labels(n: int) -> torch.Tensor:
    """70 % class 0, 30 % spread over classes 1..3: a constant predictor scores 0.7."""
    y = torch.zeros(n, dtype=torch.long)
    y[int(0.7 * n) :] = torch.arange(n - int(0.7 * n)) % 3 + 1
    return y


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_is_perfect(separable):
    assert linear_probe_accuracy(*separable) == pytest.approx(1.0, abs=0.01)


def test_linear_probe_random_labels_is_chance(random_labels):
    acc = linear_probe_accuracy(*random_labels)
    assert 0.15 < acc < 0.35


@pytest.mark.parametrize("fill", [0.0, 3.0, math.nan])
def test_linear_probe_collapsed_predicts_majority(fill):
    # Constant (or NaN, i.e. diverged) features carry no information: the intercept alone
    # predicts the majority class, which is 70 % of the val set.
    train_y, val_y = imbalanced_labels(100), imbalanced_labels(50)
    train_x, val_x = torch.full((100, 8), fill), torch.full((50, 8), fill)
    assert linear_probe_accuracy(train_x, train_y, val_x, val_y) == pytest.approx(0.7)


def test_linear_probe_single_train_class():
    x = torch.randn(10, 4)
    val_y = torch.tensor([0, 0, 0, 1])
    acc = linear_probe_accuracy(x, torch.zeros(10, dtype=torch.long), x[:4], val_y)
    assert acc == pytest.approx(0.75)


def test_linear_probe_rejects_bad_shapes(separable):
    train_x, train_y, val_x, val_y = separable
    with pytest.raises(ValueError, match="train_y"):
        linear_probe_accuracy(train_x, train_y[:-1], val_x, val_y)
    with pytest.raises(ValueError, match="feature dims"):
        linear_probe_accuracy(train_x, train_y, val_x[:, :3], val_y)


# --------------------------------------------------------------------------- kNN


def test_knn_separable_is_perfect(separable):
    assert knn_accuracy(*separable) == pytest.approx(1.0)


def test_knn_random_labels_is_chance(random_labels):
    acc = knn_accuracy(*random_labels)
    assert 0.15 < acc < 0.35


def test_knn_chunking_does_not_change_the_result(random_labels):
    # Chunk sizes that do and do not divide N_val must give the same predictions.
    full = knn_accuracy(*random_labels, chunk_size=10_000)
    assert knn_accuracy(*random_labels, chunk_size=7) == full
    assert knn_accuracy(*random_labels, chunk_size=1) == full


def test_knn_k_is_clamped_to_train_size(separable):
    train_x, train_y, val_x, val_y = separable
    acc = knn_accuracy(train_x[:5], train_y[:5], val_x, val_y, k=20)
    # The first 5 train rows are all class 0, so every val row is predicted class 0.
    assert acc == pytest.approx((val_y == 0).float().mean().item())


def test_knn_weighting_prefers_nearest_neighbour():
    # One very close class-1 neighbour vs two farther class-0 neighbours: with a sharp
    # temperature exp(s / T) lets the close one win; a very flat one makes it a 2-vs-1 vote.
    train_x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    train_y = torch.tensor([1, 0, 0])
    val_x, val_y = torch.tensor([[1.0, 0.05]]), torch.tensor([1])
    assert knn_accuracy(train_x, train_y, val_x, val_y, k=3, temperature=0.07) == 1.0
    assert knn_accuracy(train_x, train_y, val_x, val_y, k=3, temperature=1e6) == 0.0


@pytest.mark.parametrize("fill", [0.0, 2.0, math.nan])
def test_knn_collapsed_does_not_crash(fill):
    train_y, val_y = imbalanced_labels(100), imbalanced_labels(50)
    train_x, val_x = torch.full((100, 8), fill), torch.full((50, 8), fill)
    acc = knn_accuracy(train_x, train_y, val_x, val_y)
    assert 0.0 <= acc <= 1.0
    # With every train row a neighbour, all similarities tie and the vote is the majority.
    assert knn_accuracy(train_x, train_y, val_x, val_y, k=100) == pytest.approx(0.7)


# --------------------------------------------------------------------------- RankMe


def test_rankme_rank_one_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, generator=g) @ torch.randn(1, 64, generator=g)  # (200, 64), rank 1
    assert rankme(x) == pytest.approx(1.0, abs=0.01)


def test_rankme_isotropic_gaussian_is_full_rank():
    d = 32
    x = torch.randn(4000, d, generator=torch.Generator().manual_seed(0))
    # Singular values are sqrt(N) * (1 ± sqrt(D / N)): nearly equal, so the entropy is close
    # to log D (measured ≈ 31.9 for D = 32).
    assert 0.95 * d < rankme(x) <= d + 1e-6


def test_rankme_counts_the_rank_of_a_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 5, generator=g))  # 5 orthonormal columns
    x = torch.randn(2000, 5, generator=g) @ q.T  # (2000, 64), isotropic in a 5-dim subspace
    assert rankme(x) == pytest.approx(5.0, abs=0.3)


def test_rankme_is_scale_invariant():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert rankme(1e3 * x) == pytest.approx(rankme(x), rel=1e-9)
    assert rankme(1e-3 * x) == pytest.approx(rankme(x), rel=1e-9)


def test_rankme_degenerate_inputs():
    assert rankme(torch.zeros(50, 8)) == pytest.approx(1.0, abs=1e-3)
    bad = torch.randn(50, 8)
    bad[3, 2] = math.inf
    assert math.isnan(rankme(bad))
    with pytest.raises(ValueError):
        rankme(torch.randn(4, 3, 2))


# --------------------------------------------------------------------------- extraction


class ModeRecorder(nn.Module):
    """Flatten + Linear that records the train flag it saw on each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 5)
        self.seen_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        return self.linear(x.flatten(1))


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(0)
    return list(torch.randn(30, 3, 2, 2, generator=g).split(8))


def test_extract_features_shapes_and_values(batches):
    enc = ModeRecorder().train()
    feats = extract_features(enc, batches, torch.device("cpu"))
    assert feats.shape == (30, 5) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(feats, enc.linear(torch.cat(batches).flatten(1)))
    assert not feats.requires_grad
    # Ran in eval mode, and the previous (train) mode is back afterwards.
    assert enc.seen_training == [False] * 4
    assert enc.training and enc.linear.training


def test_extract_features_restores_mixed_submodule_modes(batches):
    enc = ModeRecorder().train()
    enc.linear.eval()  # e.g. a deliberately frozen submodule
    extract_features(enc, batches, torch.device("cpu"))
    assert enc.training and not enc.linear.training
    enc.eval()
    extract_features(enc, batches, torch.device("cpu"))
    assert not enc.training


def test_extract_features_autocast_returns_float32(batches):
    feats = extract_features(ModeRecorder(), batches, torch.device("cpu"), autocast_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32 and feats.shape == (30, 5)


def test_extract_features_rejects_non_2d_output(batches):
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        extract_features(nn.Identity(), batches, torch.device("cpu"))


# --------------------------------------------------------------------------- reference probe


def test_cross_validated_probe_scores_every_item_once(separable):
    train_x, train_y, val_x, val_y = separable
    x, y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
    acc, correct = cross_validated_probe(x, y, folds=5)
    assert acc == 1.0 and correct.shape == (len(y),) and correct.dtype == torch.bool
    noise = torch.randn(400, 16, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(6))
    acc, correct = cross_validated_probe(noise, labels, folds=4)
    assert abs(acc - 0.25) < 0.08 and correct.float().mean().item() == pytest.approx(acc)
    assert cross_validated_probe(noise, labels, folds=4)[0] == acc  # seeded folds


def test_cross_validated_probe_with_a_rare_class():
    x, y = clusters(20, num_classes=3)
    x, y = torch.cat([x, 30 * torch.ones(1, 16)]), torch.cat([y, torch.tensor([3])])  # one item of class 3
    acc, correct = cross_validated_probe(x, y, folds=5)
    assert correct.shape == (61,) and acc > 0.95


# --------------------------------------------------------------------------- label-free criteria


def views_of(signal: float, noise: float, m: int = 200, q: int = 4, d: int = 12, rank: int = 12, seed: int = 0) -> torch.Tensor:
    """``(m, q, d)``: image signal of covariance ``signal²`` in ``rank`` directions, plus
    view noise ``noise²`` in every direction."""
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(m, 1, d)
    s[..., :rank] = signal * torch.randn(m, 1, rank, generator=g)
    return s + noise * torch.randn(m, q, d, generator=g)


def test_gaussian_mi_matches_the_gaussian_channel_and_is_linear_invariant():
    # Signal variance 4, noise 1 in 12 directions: ½ · 12 · log(1 + 4) = 9.66 nats.
    f = views_of(2.0, 1.0, m=4000)
    assert gaussian_mi(f) == pytest.approx(6 * math.log(5), rel=0.05)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1)))
    assert gaussian_mi(f @ rotation) == pytest.approx(gaussian_mi(f), rel=1e-6)
    assert gaussian_mi(10 * f) == pytest.approx(gaussian_mi(f), rel=1e-6)
    mix = torch.randn(12, 12, generator=torch.Generator().manual_seed(1)) + 3 * torch.eye(12)
    assert gaussian_mi(f @ mix) == pytest.approx(gaussian_mi(f), rel=0.02)  # up to the ridge on Σ_w
    # More signal per unit of noise, or more informative directions, is more information.
    assert gaussian_mi(views_of(1.0, 1.0)) < gaussian_mi(views_of(3.0, 1.0))
    assert gaussian_mi(views_of(2.0, 1.0, rank=3)) < gaussian_mi(views_of(2.0, 1.0, rank=12))
    assert gaussian_mi(views_of(0.0, 1.0)) < 0.5  # pure view noise: about no information


def test_view_criteria_on_invariant_and_noisy_views():
    clean, noisy = views_of(3.0, 0.1), views_of(0.3, 1.0)
    assert view_nn_accuracy(clean) > 0.95 > 0.3 > view_nn_accuracy(noisy)
    assert invariance_ratio(clean) < 0.01 and invariance_ratio(noisy) > 0.6
    assert lidar(views_of(2.0, 1.0, rank=3)) < lidar(views_of(2.0, 1.0, rank=12))
    gauss = torch.randn(500, 4, 12, generator=torch.Generator().manual_seed(2))
    assert abs(sigreg_distance(gauss)) < 0.01 < sigreg_distance(gauss + 3.0)


def test_labelfree_criteria_names_and_a_diverged_encoder():
    from lejepa_tune.metrics import LABELFREE_CRITERIA

    values = labelfree_criteria(views_of(2.0, 1.0))
    assert tuple(values) == LABELFREE_CRITERIA and all(math.isfinite(v) for v in values.values())
    # Some of them alone: the same values, in the order asked for.
    assert labelfree_criteria(views_of(2.0, 1.0), ("std", "gmi")) == {"std": values["std"], "gmi": values["gmi"]}
    bad = views_of(2.0, 1.0)
    bad[0, 0, 0] = math.nan
    assert all(math.isnan(v) for v in labelfree_criteria(bad).values())
    assert labelfree_criteria(bad, ("gmi",)) == {"gmi": pytest.approx(math.nan, nan_ok=True)}
    with pytest.raises(ValueError, match="view features"):
        labelfree_criteria(torch.randn(10, 1, 4))
