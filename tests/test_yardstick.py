"""The fixed-yardstick loss on real tiny checkpoints: deterministic, different for different
encoders, blind to how a checkpoint was trained, and computed for a whole sweep directory."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch

from lejepa_tune.config import ViewsConfig, config_to_dict, load_config, save_config
from lejepa_tune.data import build_datasets
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.selection import evaluate_criteria, merge_metrics
from lejepa_tune.sweep import TrialRecord
from lejepa_tune.train import train
from lejepa_tune.yardstick import YARDSTICK_KEYS, Yardstick, find_checkpoint, load_encoder, yardstick_for_sweep, yardstick_loss
from tiny import TINY as TINY_BASE

TINY = [*TINY_BASE, "eval.enabled=false"]
# No blur: the views are the same kind, and much faster to make on a loaded 2-core machine.
VIEWS = ViewsConfig(blur_prob=0.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two real checkpoints: ``trained`` (1 epoch) and ``untrained`` (0 epochs, another
    projector width)."""
    root = tmp_path_factory.mktemp("yardstick")
    out = {}
    for name, extra in (("trained", ["train.epochs=1"]), ("untrained", ["train.epochs=0", "model.proj_dim=16", "train.seed=1"])):
        train(load_config(None, [*TINY, *extra, f"train.output_dir={root / name}"]))
        out[name] = root / name / "checkpoint"
    return out


@pytest.fixture(scope="module")
def images():
    return build_datasets(load_config(None, TINY).data).val  # 60 held-out images


def test_deterministic_and_leaves_the_global_rng_alone(checkpoints, images):
    state = torch.get_rng_state()
    a = Yardstick(images, VIEWS, lam=0.05, batch_size=30, n_views=2, num_slices=256)(checkpoints["trained"])
    assert torch.equal(torch.get_rng_state(), state)
    # A new yardstick (views regenerated from the seeds) gives bit-identical numbers.
    b = yardstick_loss(checkpoints["trained"], images, lam=0.05, batch_size=30, n_views=2, num_slices=256, seed=0, views=VIEWS)
    assert a == b
    assert set(a) == set(YARDSTICK_KEYS) and all(math.isfinite(v) for v in a.values())
    assert a["yardstick/loss"] == pytest.approx(0.95 * a["yardstick/inv"] + 0.05 * a["yardstick/sigreg"])
    # The views are seeded per batch: another seed gives other views (and other slices).
    c = yardstick_loss(checkpoints["trained"], images, lam=0.05, batch_size=30, n_views=2, num_slices=256, seed=1, views=VIEWS)
    assert c != a


def test_different_encoders_measure_differently(checkpoints, images):
    stick = Yardstick(images, VIEWS, batch_size=60, num_slices=256)
    trained, untrained = stick(checkpoints["trained"]), stick(checkpoints["untrained"])
    assert load_encoder(checkpoints["untrained"])[1].out_dim == 16  # another projector width works
    for key in YARDSTICK_KEYS:
        assert trained[key] != pytest.approx(untrained[key], rel=1e-3), key


def test_blind_to_the_training_batch_size_and_views(checkpoints, images, tmp_path):
    """The same weights saved by runs with another batch size, other views and another λ
    measure the same: only the yardstick's own protocol counts."""
    other = tmp_path / "other"
    shutil.copytree(checkpoints["trained"], other)
    cfg = load_config(other / "config.yaml")
    changed = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, batch_size=128),
        views=dataclasses.replace(cfg.views, n_global=4, global_scale=(0.08, 1.0)),
        loss=dataclasses.replace(cfg.loss, lam=0.4),
    )
    save_config(changed, other / "config.yaml")
    stick = Yardstick(images, VIEWS, batch_size=60, num_slices=256)
    assert stick(other) == stick(checkpoints["trained"])


def test_its_own_batch_size_matters_which_is_why_it_is_fixed(checkpoints, images):
    # SIGReg's statistic grows about linearly with N: losses at different N do not compare.
    small = Yardstick(images, VIEWS, batch_size=20, num_slices=256)(checkpoints["untrained"])
    large = Yardstick(images, VIEWS, batch_size=60, num_slices=256)(checkpoints["untrained"])
    assert large["yardstick/sigreg"] > 2.0 * small["yardstick/sigreg"]
    # The batch size is clamped to the images there are; the incomplete last batch is dropped.
    assert Yardstick(images, VIEWS, batch_size=256).batch_size == 60
    stick = Yardstick(images, VIEWS, batch_size=25)
    assert stick.num_batches == 2 and stick.batch(1).shape == (2, 25, 3, 32, 32)
    with pytest.raises(ValueError, match="n_views"):
        Yardstick(images, VIEWS, n_views=0)


def test_yardstick_for_sweep(checkpoints, tmp_path):
    sweep = tmp_path / "sweep"
    for tid, source in (("a", "trained"), ("b", "untrained"), ("s", "trained")):
        shutil.copytree(checkpoints[source], sweep / "trials" / tid / "checkpoint")
    trials = [
        TrialRecord("a", "completed", {"train.batch_size": 32}, {"train/loss": 0.5, "eval/linear_acc": 0.6}, None),
        TrialRecord("b", "completed", {"train.batch_size": 64}, {"train/loss": 0.9, "eval/linear_acc": 0.3}, None),
        TrialRecord("s", "stopped", {"train.batch_size": 64}, {"train/loss": 0.4}, None),  # never measured
        TrialRecord("lost", "completed", {"train.batch_size": 32}, {"train/loss": 0.7, "eval/linear_acc": 0.5}, None),
    ]
    base = config_to_dict(load_config(None, TINY))
    base["views"]["blur_prob"] = 0.0
    spec = sweep_spec_from_dict({
        "name": "bs",
        "base": base,
        "search": {"train.batch_size": {"type": "choice", "values": [32, 64]}},
        "selection": {"yardstick_batch_size": 30, "yardstick_lam": 0.1},
    })
    assert find_checkpoint(sweep, trials[0]) == sweep / "trials" / "a" / "checkpoint"
    assert find_checkpoint(sweep, trials[3]) is None
    with pytest.warns(UserWarning, match="no checkpoint for completed trials lost"):
        result = yardstick_for_sweep(sweep, trials, spec, device="cpu")
    assert set(result) == {"a", "b"}
    direct = Yardstick.from_spec(spec, build_datasets(spec.base.data).val)
    assert result["a"] == direct(checkpoints["trained"]) and result["b"] == direct(checkpoints["untrained"])
    assert direct.lam == 0.1 and direct.batch_size == 30 and direct.n_views == 2

    report = evaluate_criteria(merge_metrics(trials, result), spec, n_boot=50)
    assert report.default == "yardstick"
    assert report.agreements["yardstick"].n == 2 and report.agreements["yardstick"].excluded == ("lost",)
    assert report.picks["yardstick"] == min(result, key=lambda t: result[t]["yardstick/loss"])
