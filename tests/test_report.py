"""The selection report rendered for real: terminal text, PNG scatter plots, CSV and HTML."""

from __future__ import annotations

import csv
import math
from html.parser import HTMLParser

import pytest
from PIL import Image

from lejepa_tune.report import format_selection, format_table, format_trials_table, write_csv, write_html, write_plots
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.selection import evaluate_criteria
from lejepa_tune.sweep import TrialRecord


def trial(tid, status="completed", **values):
    params = {"loss.lam": values.pop("lam"), "train.batch_size": values.pop("bs")}
    return TrialRecord(tid, status, params, {k.replace("__", "/"): v for k, v in values.items()}, None)


TRIALS = [
    trial("t0", eval__rankme_backbone=5.0, lam=0.01, bs=32, train__loss=0.30, eval__rankme=20.0, yardstick__loss=3.0, eval__linear_acc=0.80),
    trial("t1", eval__rankme_backbone=6.0, lam=0.05, bs=64, train__loss=0.50, eval__rankme=25.0, yardstick__loss=2.0, eval__linear_acc=0.85),
    trial("t2", eval__rankme_backbone=7.0, lam=0.20, bs=32, train__loss=0.90, eval__rankme=30.0, yardstick__loss=1.0, eval__linear_acc=0.90),
    trial("t3", eval__rankme_backbone=4.0, lam=0.10, bs=64, train__loss=0.60, eval__rankme=math.nan, yardstick__loss=4.0, eval__linear_acc=0.70),
    trial("t4", "error", lam=0.45, bs=32, train__loss=math.nan),
]

SPEC = sweep_spec_from_dict({
    "name": "demo",
    "search": {
        "loss.lam": {"type": "loguniform", "low": 0.005, "high": 0.5},
        "train.batch_size": {"type": "choice", "values": [32, 64]},
    },
})


@pytest.fixture(scope="module")
def report():
    return evaluate_criteria(TRIALS, SPEC, n_boot=100)


def test_format_table_and_trials_table_still_work():
    text = format_table(["a", "bb"], [[1.23456, None], ["x", math.nan]])
    assert text.splitlines()[2].split() == ["1.235", "-"]
    table = format_trials_table(TRIALS, ["loss.lam"], mark="t0")
    assert table.splitlines()[2].startswith("* t0")  # lowest loss first, starred


def test_format_selection(report):
    text = format_selection(report)
    lines = text.splitlines()
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in lines[4:9]}
    assert set(rows) == {"loss", "scaled_loss", "rankme", "rankme_backbone", "yardstick"}
    assert rows["yardstick"].startswith("* yardstick")  # the default is starred
    assert " NO " in rows["loss"] and " NO " in rows["scaled_loss"] and " yes " in rows["rankme"]
    assert rows["rankme"].split()[-1] == "t3"  # its excluded trial, listed
    assert "[1.00, 1.00]" in rows["yardstick"] and " t2 " in rows["yardstick"]
    assert "default criterion: yardstick -> trial t2" in text
    assert "batch size N" in text and "loss and scaled_loss are not valid here" in text
    assert "not completed, never picked nor scored: t4 (error)" in text
    assert "(labels, for reference only): trial t2" in text


def test_write_plots_one_png_per_scored_criterion(report, tmp_path):
    paths = write_plots(report, TRIALS, tmp_path / "plots")
    assert [p.name for p in paths] == [f"selection_{c}.png" for c in report.criteria]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as image:
            assert image.format == "PNG" and image.size == (600, 450)
    # A criterion nobody was scored on gets no empty plot.
    bare = [TrialRecord(t.trial_id, t.status, t.params, {k: v for k, v in t.metrics.items() if k != "yardstick/loss"}, None) for t in TRIALS]
    names = [p.name for p in write_plots(evaluate_criteria(bare, SPEC, n_boot=10), bare, tmp_path / "bare")]
    assert "selection_yardstick.png" not in names and "selection_loss.png" in names


def test_write_csv_has_every_trial_and_criterion(report, tmp_path):
    path = write_csv(report, TRIALS, tmp_path / "out" / "selection.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in TRIALS]
    assert {"status", "lam", "loss.lam", "train.batch_size", "train/loss", "eval/linear_acc", "criterion/scaled_loss", "criterion/yardstick", "picked_by"} <= rows[0].keys()
    by_id = {r["trial_id"]: r for r in rows}
    assert float(by_id["t1"]["criterion/scaled_loss"]) == pytest.approx(0.50 / 0.05**0.4)
    assert float(by_id["t2"]["criterion/yardstick"]) == 1.0
    assert by_id["t2"]["picked_by"] == "rankme rankme_backbone yardstick" and by_id["t0"]["picked_by"] == "loss"
    assert by_id["t3"]["criterion/rankme"] == "" and by_id["t4"]["train/loss"] == ""  # nan -> blank
    assert by_id["t4"]["status"] == "error" and by_id["t4"]["eval/linear_acc"] == ""


class _Collect(HTMLParser):
    """Tags, <img> sources, table cells, and whether every opened element was closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.cells, self.balanced = [], [], [], True

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.balanced = False

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "td":
            self.cells.append(data)


def test_write_html_is_self_contained_with_relative_images(report, tmp_path):
    plots = write_plots(report, TRIALS, tmp_path / "plots")
    page = write_html(report, TRIALS, plots, tmp_path / "selection.html")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    parser = _Collect()
    parser.feed(text)
    parser.close()
    assert parser.balanced and parser.stack == []
    assert parser.images == [f"plots/selection_{c}.png" for c in report.criteria]
    assert all((tmp_path / src).is_file() for src in parser.images)
    for tid in ("t0", "t1", "t2", "t3", "t4"):
        assert tid in parser.cells
    assert "Default criterion: yardstick" in text and "batch size N" in text
    assert str(tmp_path) not in text  # nothing of this machine's layout in the page
