"""Tests for lejepa_tune.report: terminal tables, CSV files and the self-contained HTML page of
an analysed sweep (hand-made records; the page in a real browser is in test_browser.py)."""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from lejepa_tune.analysis import analyse
from lejepa_tune.metrics import DEVICE
from lejepa_tune.report import best_completed_so_far, format_selection, format_table, format_trials_table, write_report
from tiny import REPORT_FIGURES, synthetic_records, with_near_tie


def test_format_table_aligns_and_marks_missing_values():
    text = format_table(["a", "bb"], [[1.23456, None], ["x", float("nan")]])
    assert text.splitlines() == ["a      bb", "-----  --", "1.235  - ", "x      - "]


def test_the_search_over_time_follows_the_best_completed_trial():
    """A stopped trial's value (from an earlier epoch) is drawn but never the best so far, as it
    is never the choice; nor is an errored trial's."""
    series = [(0, 3.0, "completed"), (1, 9.0, "stopped"), (2, 5.0, "completed"), (3, 4.0, "completed"), (4, 8.0, "error"), (5, 6.0, "completed")]
    assert [b for _, b in best_completed_so_far(series, "max")] == [3.0, 3.0, 5.0, 5.0, 5.0, 6.0]
    assert [b for _, b in best_completed_so_far(series, "min")] == [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    head = best_completed_so_far([(0, 1.0, "stopped"), (1, 2.0, "completed")], "max")
    assert np.isnan(head[0][1]) and head[1] == (1, 2.0)


def test_trials_table_sorts_by_the_objective_and_stars_the_choice(synthetic_report):
    a, _ = synthetic_report
    lines = format_trials_table(a).splitlines()
    assert lines[2].startswith(f"* {a.choice}")
    assert "stop" in lines[-2] and "fail" in lines[-1]  # unfinished trials last
    assert lines[0].split()[2:4] == ["lam", "lr"]


def test_the_near_ties_are_marked_beside_the_choice_in_the_terminal_and_on_the_page(tmp_path):
    a = analyse(with_near_tie(synthetic_records()), n_boot=20)
    (tie,) = a.selection.near_ties
    lines = format_trials_table(a).splitlines()
    assert lines[2].startswith(f"* {a.choice}") and lines[3].startswith(f"~ {tie}")
    assert sum(line.startswith("~ ") for line in lines) == 1
    page = write_report(a, tmp_path)["html"].read_text()
    # The page's trials, best objective first, as in the terminal: the choice, then its near-tie.
    trials = page[page.index("<h2>Trials</h2>"):]
    assert re.findall(r'<tr class="(\w+)"><td class="l">(\w+)</td>', trials) == [("pick", a.choice), ("tie", tie)]
    assert "its near-ties amber: where a few labels can be had, probe them." in trials
    assert "near-ties amber" not in write_report(analyse(synthetic_records(), n_boot=20), tmp_path / "none")["html"].read_text()


def test_the_page_says_what_trained_the_trials(tmp_path):
    """From the trials' ``system/device``: on a CPU, other kernels train the same configuration
    into another encoder, so the page names them (each once); a sweep without them says nothing."""
    records = synthetic_records()
    where = ["cpu (AVX512): Processor A" if i % 3 else "cpu (AVX2): Processor B" for i in range(len(records.trials))]
    trials = tuple(replace(t, details={**t.details, DEVICE: w}) for t, w in zip(records.trials, where))
    page = write_report(analyse(replace(records, trials=trials), n_boot=20), tmp_path)["html"].read_text()
    assert "Trained on cpu (AVX2): Processor B; cpu (AVX512): Processor A.</p>" in page[page.index("<h2>Trials</h2>"):]
    assert "Trained on" not in write_report(analyse(records, n_boot=20), tmp_path / "none")["html"].read_text()


def test_selection_summary_names_the_choice_the_reference_and_the_ceiling(synthetic_report):
    a, _ = synthetic_report
    text = format_selection(a)
    assert f"choice: {a.choice} by objective" in text
    assert "noise ceiling" in text and "eval/linear_acc_cv" in text
    row = next(line for line in text.splitlines() if line.startswith("  loss "))
    assert " NO " in row  # the raw loss is not valid across λ


def test_regret_is_shown_in_points_of_accuracy_and_kept_as_a_fraction_in_the_csv(synthetic_report):
    a, files = synthetic_report
    # A criterion that missed (in points, its regret reads differently from the fraction).
    name, agreement = next((c, g) for c, g in a.selection.agreements.items() if 0.001 < g.regret < 0.999)
    lines = format_selection(a).splitlines()
    header = next(line for line in lines if line.startswith("  criterion"))
    row = next(line for line in lines if line[2:].startswith(f"{name} "))
    start = header.index("regret (points)")
    assert row[start:].split()[0] == f"{100 * agreement.regret:.1f}"
    page = files["html"].read_text()
    headline = a.selection.agreements[a.selection.default].regret
    assert f"regret {100 * headline:.1f} points;" in page and "<th>regret (points)</th>" in page
    assert f"<td>{100 * agreement.regret:.1f}</td>" in page
    crit = next(r for r in csv.DictReader(open(files["criteria_csv"])) if r["criterion"] == name)
    assert float(crit["regret"]) == pytest.approx(agreement.regret)


def test_correlations_are_shown_to_two_decimals_as_their_intervals_and_kept_whole_in_the_csv(synthetic_report):
    a, files = synthetic_report
    sel = a.selection
    agreement = sel.agreements[sel.default]
    rho, ceiling = f"{agreement.spearman:.2f}", f"{sel.noise_ceiling:.2f}"
    lines = format_selection(a).splitlines()
    header = next(line for line in lines if line.startswith("  criterion"))
    row = next(line for line in lines if line.startswith(f"* {sel.default} "))
    for column, value in (("spearman", agreement.spearman), ("kendall", agreement.kendall), ("top3", agreement.top3_overlap)):
        assert row[header.index(column):].split()[0] == f"{value:.2f}", column
    assert any(line.endswith(f"against this reference): {ceiling}") for line in lines)
    page = files["html"].read_text()
    lo, hi = agreement.spearman_ci
    assert f"Spearman ρ = {rho} [{lo:.2f}, {hi:.2f}]" in page and f"(noise ceiling {ceiling})" in page
    assert f"<td>{rho}</td>" in page
    crit = next(r for r in csv.DictReader(open(files["criteria_csv"])) if r["criterion"] == sel.default)
    assert float(crit["spearman"]) == pytest.approx(agreement.spearman, abs=1e-12)


def test_report_files(synthetic_report):
    a, files = synthetic_report
    rows = list(csv.DictReader(open(files["trials_csv"])))
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in a.records.trials]
    assert rows[0]["loss.lam"] and rows[0]["criterion/objective"]
    assert "objective" in next(r for r in rows if r["trial_id"] == a.choice)["picked_by"].split()
    crit = list(csv.DictReader(open(files["criteria_csv"])))
    assert [r["criterion"] for r in crit] == list(a.selection.criteria)


def test_html_is_self_contained_and_its_images_decode(synthetic_report):
    a, files = synthetic_report
    page = files["html"].read_text()
    assert "<script" not in page and 'src="http' not in page
    # Every figure, in the page's order (these records have something for each to show).
    figures = re.findall(r'<img id="([^"]+)"', page)
    assert figures == REPORT_FIGURES
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(figures)
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.size[0] > 300 and img.size[1] > 200 and len(np.unique(np.asarray(img.convert("L")))) > 10  # not blank
    assert f"trial {a.choice}" in page and "accuracy against λ" in page
    header = re.search(r"<h2>Trials</h2>\s*<p class=\"note\">[^<]*</p>\s*<table><thead><tr>(.*?)</tr>", page).group(1)
    columns = re.findall(r"<th[^>]*>(.*?)</th>", header)
    assert len(columns) == len(set(columns))  # no duplicated columns


def test_an_interrupted_sweep_says_so_with_how_to_resume_and_an_undefined_rho_in_words(tmp_path):
    from dataclasses import replace

    records = synthetic_records()
    done = [t for t in records.trials if t.status == "completed"][:2]
    spec = {**records.spec, "tune": {"num_samples": 8}}
    a = analyse(replace(records, spec=spec, trials=tuple(done), interrupted=True), n_boot=100)
    warning = "the sweep was interrupted, with 2 of its 8 trials completed"
    assert a.warnings[0].startswith(warning) and f"lejepa-tune run --resume {records.sweep_dir}" in a.warnings[0]
    assert warning in format_selection(a)
    page = write_report(a, tmp_path)["html"].read_text()
    assert warning in page and "Spearman ρ undefined (2 trials)" in page
    assert "<h2>Trials</h2>\n<p class=\"note\">2 trials (2 completed), best objective first. The choice is shaded green.</p>" in page
