"""What a person sees, where they would look: the report page and the MLflow UI, rendered in a
real headless Chromium (Playwright driving the system's chromium; the ``browser`` fixture, which
skips with the reason where either is missing). The Ray dashboard is looked at in
``test_cluster.py``, on the cluster a sweep ran on. Screenshots are kept in the test's temporary
directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lejepa_tune.analysis import analyse
from lejepa_tune.pipeline import publish
from lejepa_tune.metrics import OBJECTIVE, REFERENCE_ACC
from lejepa_tune.records import trial_label
from lejepa_tune.report import write_report
from ranks import free_port
from tiny import REPORT_FIGURES, mlflow_server_env, stop_tree, tracked_records, wait_for, with_near_tie


def test_the_report_page_shows_every_image_and_fits_the_page(browser, synthetic_report, tmp_path):
    page_path = synthetic_report[1]["html"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_path.as_uri())
    images = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight])")
    assert [i[0] for i in images] == REPORT_FIGURES
    for name, complete, width, height in images:
        assert complete and width > 300 and height > 150, name  # decoded, not empty
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # nothing overflows the page
    assert "Chosen without labels" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


@pytest.mark.slow
def test_the_mlflow_ui_opens_on_the_runs_table_named_by_searched_values(browser, tmp_path, mlflow_uri):
    uri = mlflow_uri
    tracker, records = tracked_records(uri, 6, "ui_sweep", str(tmp_path / "sweep"))
    records = with_near_tie(records)
    analysis = analyse(records, n_boot=100)
    publish(analysis, records, write_report(analysis, tmp_path / "report")["html"].parent)

    port = free_port()
    # The command the sweep prints, on a free port: one worker, loopback only.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=mlflow_server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        page = browser.new_page(viewport={"width": 1920, "height": 950})  # a full-HD screen: the tag columns in view beside MLflow's assistant
        tracker.share_view(["loss.lam", "optim.lr"], OBJECTIVE, "max", REFERENCE_ACC)
        page.goto(tracker.ui_link(f"http://127.0.0.1:{port}"))  # the link the sweep prints
        chosen = next(t for t in records.trials if t.trial_id == analysis.choice)
        page.get_by_text(trial_label(chosen.params)).first.wait_for(timeout=90_000)  # children named by their values
        body = page.inner_text("body")
        assert "Model training" in body and "Sort: labelfree/objective" in body  # the runs table, sorted by the objective
        for column in ("loss.lam", "optim.lr", "labelfree/object", "eval/linear_acc", "lejepa_tune.chosen", "lejepa_tune.near_tie"):
            assert column in body, column
        page.screenshot(path=str(tmp_path / "mlflow_runs.png"))
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs/{tracker.parent_run_id}?workflowType=machine_learning")
        page.get_by_text("Chosen without labels").first.wait_for(timeout=60_000)  # the sweep run's description
        page.screenshot(path=str(tmp_path / "mlflow_sweep_run.png"))
    finally:
        stop_tree(server.pid)
