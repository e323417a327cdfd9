"""The repository keeps its promises: the README opens with the two commands, CI runs exactly
the README's test command, and every experiment runs in its smoke mode."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert "pip install -e ." in run and run.endswith("lejepa-tune run search_spaces/lambda_sweep.yaml")
    assert 'pip install -e ".[dev]"' in test and "pytest" in test


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "experiments").glob("*.py")))
def test_experiment_smoke_test(script, tmp_path, local_ray, mlflow_uri):
    path = ROOT / "experiments" / script
    # A script that runs sweeps joins the session's Ray instead of starting its own, and tracks
    # them in its output directory's mlflow.db: here the session's new, empty copy (mlflow_uri).
    join = ["--address", local_ray.get_runtime_context().gcs_address] if "--address" in path.read_text() else []
    proc = subprocess.run(
        [sys.executable, str(path), "--smoke-test", "--output-dir", str(tmp_path), *join],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "an experiment prints its results"
