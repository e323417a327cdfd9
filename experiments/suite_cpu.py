"""How much CPU the test suite needs, set against the time it takes.

Runs pytest in this process, as the README's test command does, and reads the machine's CPU
times (``psutil.cpu_times``: every process, so pytest's own, Ray's, and the servers and browsers
the tests start) before and after every test, setup and teardown included. It reports the
suite's wall time, the core-seconds of CPU the machine spent in it, the share of the cores that
was busy, and so the least wall time the same work could take with every core busy all the
time; then the same split between the end-to-end (``slow``) tests and the rest, and the tests
that took the most CPU.

The CPU times are the whole machine's: run it on an otherwise idle machine. The machine's speed
(``machine_speed.py``) is printed as it was before and after the run: the same suite took about
twice the CPU on a slow day.

    python experiments/suite_cpu.py                        # the whole suite (9-18 min on 2 cores)
    python experiments/suite_cpu.py -- -m "not slow"       # the quick loop
    python experiments/suite_cpu.py --smoke-test           # one small test file, for CI

With ``--workers``, the suite instead runs once per worker count given (``-n 0``: one process;
``-n 2``: two pytest-xdist workers), ``--rounds`` times,
alternating, each as a fresh ``python -m pytest``, and only the totals are reported: with tests
running side by side, the machine's CPU cannot be split between them.

    python experiments/suite_cpu.py --workers 0 2          # one process against two workers
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from lejepa_tune.report import format_table
from machine_speed import speed_line

ROOT = Path(__file__).resolve().parents[1]
SMOKE = [str(ROOT / "tests" / "test_agreement.py")]


def busy_seconds() -> float:
    """Core-seconds the machine's CPUs have spent running its own processes and kernel, since
    boot: not idle, not waiting for I/O, not stolen by the hypervisor (and guest time, which
    Linux already counts in user time, once)."""
    t = psutil.cpu_times()
    left_out = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(t) - sum(getattr(t, name, 0.0) for name in left_out)


class CpuPerTest:
    """A pytest plugin: wall seconds and the machine's busy core-seconds of every test."""

    def __init__(self) -> None:
        self.tests: list[dict] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        wall, cpu = time.perf_counter(), busy_seconds()
        yield
        self.tests.append({
            "test": item.nodeid,
            "slow": item.get_closest_marker("slow") is not None,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": busy_seconds() - cpu,
        })


def share(cpu: float, wall: float, cores: int) -> str:
    return f"{cpu / (wall * cores):.0%}" if wall else "-"


def summary(rows: list[dict], wall: float, cpu: float, cores: int) -> list[list]:
    return [
        ["tests", len(rows)],
        ["wall time (s)", f"{wall:.0f}"],
        ["CPU spent, all processes (core-seconds)", f"{cpu:.0f}"],
        [f"share of the {cores} cores busy", share(cpu, wall, cores)],
        [f"least wall time for this CPU on {cores} cores (s)", f"{cpu / cores:.0f}"],
    ]


def compare_workers(workers: list[int], rounds: int, pytest_args: list[str], cores: int, smoke: bool) -> int:
    """The suite once per worker count, ``rounds`` times alternating: wall time, the machine's
    CPU, and the share of its cores that was busy, side by side."""
    rows, worst = [], 0
    print(f"before, {speed_line(1 if smoke else 3)}")
    for round_ in range(1, rounds + 1):
        for n in workers:
            command = [sys.executable, "-m", "pytest", *pytest_args, "-q", "-p", "no:cacheprovider", "-n", str(n)]
            wall, cpu = time.perf_counter(), busy_seconds()
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            wall, cpu = time.perf_counter() - wall, busy_seconds() - cpu
            outcome = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", proc.stdout, re.M)
            rows.append([round_, n, f"{wall:.0f}", f"{cpu:.0f}", share(cpu, wall, cores), outcome[-1] if outcome else f"exit {proc.returncode}"])
            worst = max(worst, proc.returncode)
            failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
            if failures:  # which, and where the whole output went, for the failure to be read
                log = Path(tempfile.mkstemp(prefix=f"suite_n{n}_round{round_}_", suffix=".log")[1])
                log.write_text(proc.stdout + proc.stderr)
                print("\n".join(failures) + f"\n(pytest's output: {log})", flush=True)
    if not smoke:
        print(f"afterwards, {speed_line()}")
    print(format_table(["round", "pytest -n", "wall (s)", "CPU (core-s)", f"share of the {cores} cores busy", "tests"], rows))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="where the per-test JSON goes (default: a new temporary folder)")
    parser.add_argument("--top", type=int, default=15, help="how many of the costliest tests to list")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="compare the suite's totals run with these pytest-xdist worker counts")
    parser.add_argument("--rounds", type=int, default=1, help="with --workers: how many times to run each, alternating")
    parser.add_argument("pytest_args", nargs="*", help="pytest's arguments, after --")
    args = parser.parse_args()
    if args.workers:
        pytest_args = SMOKE if args.smoke_test else args.pytest_args
        raise SystemExit(compare_workers(args.workers, args.rounds, pytest_args, psutil.cpu_count(), args.smoke_test))
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="suite_cpu_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # the README's test command runs from the project's root, where `testpaths` applies
    cores = psutil.cpu_count()
    plugin = CpuPerTest()
    pytest_args = [*(SMOKE if args.smoke_test else args.pytest_args), "-q", "-p", "no:cacheprovider", "-n", "0", f"--rootdir={ROOT}"]
    speed_before = speed_line(1 if args.smoke_test else 3)
    wall, cpu = time.perf_counter(), busy_seconds()
    code = pytest.main(pytest_args, plugins=[plugin])
    wall, cpu = time.perf_counter() - wall, busy_seconds() - cpu
    (out / "tests.json").write_text(json.dumps(plugin.tests, indent=1))
    rows = plugin.tests
    print()
    print(f"pytest {' '.join(pytest_args)}: exit {int(code)}")
    print(f"before, {speed_before}")
    if not args.smoke_test:
        print(f"afterwards, {speed_line()}")
    print(format_table(["the suite", "value"], summary(rows, wall, cpu, cores)))
    print()
    split = []
    for name, part in (("end-to-end (slow)", [r for r in rows if r["slow"]]), ("the rest", [r for r in rows if not r["slow"]])):
        w, c = sum(r["wall_s"] for r in part), sum(r["cpu_s"] for r in part)
        split.append([name, len(part), f"{w:.0f}", f"{c:.0f}", share(c, w, cores)])
    print(format_table(["tests", "count", "wall (s)", "CPU (core-s)", "cores busy"], split))
    print()
    top = sorted(rows, key=lambda r: -r["cpu_s"])[: args.top]
    print(format_table(["test", "wall (s)", "CPU (core-s)", "cores busy"], [[r["test"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", share(r["cpu_s"], r["wall_s"], cores)] for r in top]))
    print(f"\nper test: {out / 'tests.json'}")
    raise SystemExit(int(code))


if __name__ == "__main__":
    main()
