"""A team's MLflow: a real ``mlflow server`` on loopback with a PostgreSQL backend store and
``--serve-artifacts``, a sweep that logs to it by URL (with a password in the URL, which must
never be written down), and ``lejepa-tune report`` reading the result back through the server
alone. Skipped, with the reason, where PostgreSQL is not installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lejepa_tune.cli import main
from ranks import free_port
from tiny import LAM_SEARCH, mlflow_server_env, stop_tree, write_space

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(INITDB[-1] is None, reason="PostgreSQL is not installed (apt-get install postgresql)"),
]


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its commands as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    bindir = Path(INITDB[-1]).parent
    # Not below pytest's temporary directories: those are private to this user, and the server
    # runs as the postgres user when this one is root.
    root = Path(tempfile.mkdtemp(prefix="lejepa_pg_"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"]), check=True, capture_output=True, timeout=120)
    subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start",
                                "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"]), check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], check=True, capture_output=True, timeout=60)
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres, "--serve-artifacts",
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=mlflow_server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
    yield url, artifacts
    stop_tree(server.pid)


def test_a_sweep_logs_to_a_tracking_server_and_the_report_reads_it_back(local_ray, mlflow_server, tmp_path, monkeypatch, capsys):
    url, artifacts = mlflow_server
    secret_url = url.replace("http://", "http://lejepa:hunter2-secret@")  # the server does not check it
    space = write_space(tmp_path, "served", LAM_SEARCH, {"num_samples": 1})
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(space), "--tracking-uri", secret_url, "--no-dashboard"]) == 0
    out = capsys.readouterr()
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # through the server
    assert list(Path(artifacts).rglob("records.json")) and list(Path(artifacts).rglob("report.html"))
    # The password was printed, written and logged nowhere.
    written = [p.read_text(errors="ignore") for p in sweep_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".csv", ".html")]
    logged = [str(r.data.params) + str(r.data.tags) for r in runs]
    for text in [out.out, out.err, *written, *logged]:
        assert "hunter2-secret" not in text

    # `report` by experiment name, elsewhere, with no local path: through the server alone.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    shutil.rmtree(sweep_dir)
    assert main(["report", "served", "--tracking-uri", url, "--output-dir", str(elsewhere / "report")]) == 0
    parent = next(r for r in runs if r.data.tags.get("lejepa_tune.role") == "sweep")
    assert f"choice: {parent.data.tags['lejepa_tune.choice']} by objective" in capsys.readouterr().out
    assert (elsewhere / "report" / "report.html").is_file()
