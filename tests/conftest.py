"""Fixtures shared by the test modules: one local Ray instance for the whole session (every
real-Ray test joins it instead of starting its own), two gloo ranks for the whole session (every
test of collectives runs its function on them instead of spawning its own), a headless Chromium
per module that looks at pages, a scratch working directory, a new SQLite tracking database per
test that asks for one, one synthetic report, and ``tests/`` on the import path."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(config, items):
    """The end-to-end (``slow``) tests first, each file's in its order: with the suite split
    between workers (``pytest -n 2``), the quick tests then fill the gaps at the end, instead of
    one worker running a long sweep alone while the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def scratch_directory(tmp_path_factory):
    """Every test runs in a scratch directory, not in the repository: MLflow puts the artifacts
    of a SQLite store's experiments in ``./mlruns`` of the directory that creates them."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """A SQLite tracking database whose tables MLflow created (through ``open_client``, as a sweep
    creates them), once per session."""
    from lejepa_tune.tracking import open_client

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    open_client(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def mlflow_uri(mlflow_template, tmp_path):
    """The URI of a new, empty SQLite tracking database in the test's directory: a copy of the
    session's template, the same file MLflow would create there. MLflow's migrations take 1-2 s
    per new database; the tests of how a new database is created make theirs themselves."""
    from tiny import new_tracking_db

    return new_tracking_db(mlflow_template, tmp_path)


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory):
    """One analysis of hand-made records (``tiny.synthetic_records``) and the report written
    from it, ``(analysis, files)``, made once for the tests that only read them: the report's
    tests and the look of its page in a browser (each analysis bootstraps, each report draws its
    plots: seconds)."""
    from tiny import synthetic_records

    from lejepa_tune.analysis import analyse
    from lejepa_tune.report import write_report

    analysis = analyse(synthetic_records(), n_boot=100)
    return analysis, write_report(analysis, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="session")
def local_ray():
    import ray

    from lejepa_tune.sweep import init_ray

    if not ray.is_initialized():
        # With the dashboard, whose state API Ray Train needs to free the workers of a trial that a
        # scheduler stops, as in the sweeps `lejepa-tune run` starts.
        init_ray(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def gloo_ranks():
    """Two spawned processes in one gloo process group: ``gloo_ranks.run(fn, *args)`` runs a
    module-level ``fn`` on both and returns their results, by rank."""
    from ranks import Ranks

    ranks = Ranks(world=2)
    yield ranks
    ranks.close()


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (the system's, driven by Playwright) for the tests of what a person
    sees; skips, with the reason, where either is not installed."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
