"""The fixed label-free set: identical pixels for every trial of a sweep, whatever the trial's
own batch size, view counts or seed; and the criteria measured on it, the objective among them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from lejepa_tune.config import config_from_dict
from lejepa_tune.data import as_tensors, build_datasets
from lejepa_tune.labelfree import LabelFreeSet, criteria, embed_views, measure, objective_of, resampled_objective
from lejepa_tune.metrics import FEATURE_SPACES, LABELFREE_CRITERIA, OBJECTIVE, labelfree_key
from lejepa_tune.models import build_model
from tiny import TINY_BASE


@pytest.fixture(scope="module")
def setting():
    cfg = config_from_dict(TINY_BASE)
    splits = build_datasets(cfg.data)
    return cfg, as_tensors(splits.train), splits.num_classes


def test_every_trial_sees_the_same_views(setting):
    cfg, train, _ = setting
    other = config_from_dict({**TINY_BASE, "train": {"epochs": 3, "batch_size": 16, "seed": 7}, "views": {"n_global": 4, "n_local": 2}})
    a, b = LabelFreeSet(train, cfg.labelfree, cfg.views), LabelFreeSet(train, other.labelfree, other.views)
    rows = list(range(len(a)))
    assert len(a) == cfg.labelfree.num_images
    assert torch.equal(a.views(rows, torch.device("cpu")), b.views(rows, torch.device("cpu")))
    # Another labelfree.seed draws other images and other views.
    reseeded = LabelFreeSet(train, dataclasses.replace(cfg.labelfree, seed=cfg.labelfree.seed + 1), cfg.views)
    assert not torch.equal(a.views(rows, torch.device("cpu")), reseeded.views(rows, torch.device("cpu")))


def test_a_set_larger_than_the_data_is_refused_by_its_key(setting):
    cfg, train, _ = setting
    with pytest.raises(ValueError, match="labelfree.num_images"):
        LabelFreeSet(train, dataclasses.replace(cfg.labelfree, num_images=len(train) + 1), cfg.views)


def test_measure_reports_every_criterion_and_the_objective_whatever_the_batch(setting):
    cfg, train, num_classes = setting
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes).eval()
    lfset = LabelFreeSet(train, cfg.labelfree, cfg.views)
    whole = measure(model, lfset, torch.device("cpu"), None, batch_size=256)
    assert set(whole) == {labelfree_key(s, c) for s in FEATURE_SPACES for c in LABELFREE_CRITERIA} | {OBJECTIVE}
    assert whole[OBJECTIVE] == whole[labelfree_key("backbone", "gmi")]
    # Embedding in small batches gives the same numbers (eval mode: no batch statistics).
    pieces = measure(model, lfset, torch.device("cpu"), None, batch_size=7)
    assert pieces == pytest.approx(whole, rel=1e-4, abs=1e-6)


def test_the_objective_alone_is_the_criteria_objective(setting):
    cfg, train, num_classes = setting
    torch.manual_seed(0)
    features = embed_views(build_model(cfg.model, num_classes), LabelFreeSet(train, cfg.labelfree, cfg.views), torch.device("cpu"), None)
    assert objective_of(features) == criteria(features)[OBJECTIVE]
    assert math.isnan(objective_of({"backbone": torch.full_like(features["backbone"], math.nan)}))


def test_resamples_of_the_images_are_drawn_from_the_seed_and_pair_up_between_runs():
    gen = torch.Generator().manual_seed(0)
    a = {"backbone": torch.randn(128, 2, 16, generator=gen) + 2.0 * torch.randn(128, 1, 16, generator=gen)}
    b = {"backbone": a["backbone"] + 0.2 * torch.randn(128, 2, 16, generator=gen)}  # another run, close to the first
    ra, rb = resampled_objective(a, 100, seed=3), resampled_objective(b, 100, seed=3)
    assert ra.shape == (100,) and np.array_equal(ra, resampled_objective(a, 100, seed=3))
    assert not np.array_equal(ra, resampled_objective(a, 100, seed=4))
    # The values scatter around the whole set's; paired (the same images in both runs), the two
    # runs' differences scatter far less than either run's values do.
    assert ra.min() < objective_of(a) < ra.max()
    assert np.std(ra - rb) < 0.5 * np.std(ra)
    assert np.std(ra - resampled_objective(b, 100, seed=4)) > 0.9 * np.std(ra)  # unpaired: no such thing
    # A diverged run's features: nan on every resample; none asked for: none.
    assert np.isnan(resampled_objective({"backbone": torch.full((128, 2, 16), math.nan)}, 5, seed=3)).all()
    assert resampled_objective(a, 0, seed=3).shape == (0,)
