"""What a person sees, where they would look: the report page, the MLflow UI and the Ray
dashboard, rendered in a real headless Chromium (Playwright driving the system's chromium).
Skipped, with the reason, where Chromium or Playwright is not installed. Screenshots are kept
in the test's temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from lejepa_tune.analysis import analyse
from lejepa_tune.pipeline import publish
from lejepa_tune.metrics import OBJECTIVE, REFERENCE_ACC
from lejepa_tune.records import trial_label
from lejepa_tune.report import write_report
from ranks import free_port
from tiny import LAM_SEARCH, mlflow_server_env, stop_tree, synthetic_records, tracked_records, write_space

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_the_report_page_shows_every_image_and_fits_the_page(browser, tmp_path):
    page_path = write_report(analyse(synthetic_records(12), n_boot=100), tmp_path)["html"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_path.as_uri())
    images = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 5 and {i[0] for i in images} == {"criteria", "accuracy_vs_lambda", "search_over_time", "importance", "parallel"}
    for name, complete, width, height in images:
        assert complete and width > 300 and height > 150, name  # decoded, not empty
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # nothing overflows the page
    assert "Chosen without labels" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


@pytest.mark.slow
def test_the_mlflow_ui_opens_on_the_runs_table_named_by_searched_values(browser, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, records = tracked_records(uri, 6, "ui_sweep", str(tmp_path / "sweep"))
    analysis = analyse(records, n_boot=100)
    publish(analysis, records, write_report(analysis, tmp_path / "report")["html"].parent)

    port = free_port()
    # The command the sweep prints, on a free port: one worker, loopback only.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=mlflow_server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        tracker.share_view(["loss.lam", "optim.lr"], OBJECTIVE, "max", REFERENCE_ACC)
        page.goto(tracker.ui_link(f"http://127.0.0.1:{port}"))  # the link the sweep prints
        chosen = next(t for t in records.trials if t.trial_id == analysis.choice)
        page.get_by_text(trial_label(chosen.params)).first.wait_for(timeout=90_000)  # children named by their values
        body = page.inner_text("body")
        assert "Model training" in body and "Sort: labelfree/objective" in body  # the runs table, sorted by the objective
        for column in ("loss.lam", "optim.lr", "labelfree/object", "eval/linear_acc"):
            assert column in body, column
        page.screenshot(path=str(tmp_path / "mlflow_runs.png"))
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs/{tracker.parent_run_id}?workflowType=machine_learning")
        page.get_by_text("Chosen without labels").first.wait_for(timeout=60_000)  # the sweep run's description
        page.screenshot(path=str(tmp_path / "mlflow_sweep_run.png"))
    finally:
        stop_tree(server.pid)


@pytest.mark.slow
def test_the_ray_dashboard_answers_behind_its_token_and_shows_a_sweeps_trial(browser, tmp_path):
    """A cluster as Ray starts it (token auth), a one-trial sweep run on it by `lejepa-tune run
    --address`, then its dashboard: the token dialog, and behind it the Actors page with the
    trial's processes (Tune's trial actor, Ray Train's controller and worker)."""
    from lejepa_tune.sweep import dashboard_hint

    port, gcs = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "lejepa-test-token-0123456789"}
    temp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths live below it
    ray_cli = str(Path(sys.executable).parent / "ray")
    started = subprocess.run([ray_cli, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}", "--num-cpus=1",
                              "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/api/authentication_mode")
        hint = dashboard_hint(url)
        assert "ray get-auth-token" in hint and env["RAY_AUTH_TOKEN"] not in hint
        space = write_space(tmp_path, "watched", LAM_SEARCH, {"num_samples": 1})
        run = subprocess.run([sys.executable, "-m", "lejepa_tune", "run", str(space), "--address", f"127.0.0.1:{gcs}",
                              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "sweeps")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_text("Authentication Token Required").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ray_dialog.png"))
        context = browser.new_context(viewport={"width": 1400, "height": 900}, extra_http_headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
        authed = context.new_page()
        authed.goto(f"{url}/#/actors")
        authed.get_by_text("RayTrainWorker").first.wait_for(timeout=60_000)
        body = authed.inner_text("body")
        assert "Authentication Token Required" not in body
        assert all(name in body for name in ("ImplicitFunc", "trial_driver", "TrainController", "RayTrainWorker")), body[:2000]
        authed.screenshot(path=str(tmp_path / "ray_actors.png"), full_page=True)
    finally:  # this cluster's processes only (`ray stop` would stop every Ray on the machine)
        for proc in psutil.process_iter(["cmdline"]):
            if any(temp in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)
