"""Tests for lejepa_tune.metrics: which keys read labels, the modes a search may use, and the
packed per-image results of the reference probe."""

from __future__ import annotations

import math

import numpy as np

from lejepa_tune.metrics import OBJECTIVE, criterion_keys, label_free_modes, pack_bits, reads_labels, scaled_loss, unpack_bits


def test_label_using_metrics_are_recognised():
    for key in ("eval/linear_acc", "eval/linear_acc_cv", "eval/knn_acc", "online/acc", "train/probe_loss"):
        assert reads_labels(key)
    for key in ("train/loss", "train/scaled_loss", OBJECTIVE, "labelfree/backbone/gmi"):
        assert not reads_labels(key)


def test_every_searchable_metric_is_label_free_and_has_a_direction():
    modes = label_free_modes()
    assert modes[OBJECTIVE] == "max" and modes["train/loss"] == "min" and modes["labelfree/backbone/inv_ratio"] == "min"
    assert not any(reads_labels(k) for k in modes)
    assert set(criterion_keys().values()) <= set(modes)


def test_scaled_loss_is_undefined_where_lambda_is_not_positive():
    assert scaled_loss(0.5, 0.25, 0.5) == 1.0  # 0.5 / √0.25
    for lam in (0.0, -0.1, math.nan):
        assert math.isnan(scaled_loss(0.5, lam, 0.4))


def test_bits_pack_and_unpack():
    flags = np.random.default_rng(0).random(1797) < 0.8
    text = pack_bits(flags)
    assert text.startswith("1797:") and len(text) < 320
    assert np.array_equal(unpack_bits(text), flags)
