"""How fast this machine runs right now: two fixed pieces of work, timed, to set beside any other
timing taken on it.

The machines these figures come from are shared, and the same work took two to two and a half
times as long on a slow day as on a fast one: the suite, a trial's start-up and the default sweep
all move together. A
timing says little without the machine's speed when it was taken, so the experiments that time
things (``trial_startup.py``, ``suite_cpu.py``) print this line before and after their runs:

* a pure-Python loop of ten million additions, the best of three: the interpreter's own speed,
  at which imports and Ray's Python run;
* ``import torch`` in a fresh process, the best of three: what every trial's worker pays, and
  the largest single import of a trial.

Lower is faster. Compare timings taken at different times only together with these.

    python experiments/machine_speed.py
    python experiments/machine_speed.py --smoke-test   # one try of each, for CI
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

LOOP = 10_000_000


def loop_seconds(repeats: int = 3) -> float:
    """The best of ``repeats`` timings of a pure-Python loop of ``LOOP`` additions."""
    best = float("inf")
    for _ in range(repeats):
        start, total = time.perf_counter(), 0
        for i in range(LOOP):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def fresh_import_seconds(module: str) -> float:
    """Seconds a fresh interpreter takes to import ``module`` (the interpreter's start excluded)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def speed_line(repeats: int = 3) -> str:
    """One line: both figures, as the experiments print them."""
    loop = loop_seconds(repeats)
    torch_import = min(fresh_import_seconds("torch") for _ in range(repeats))
    return (f"machine speed (lower is faster; best of {repeats}): a Python loop of {LOOP:,} additions {loop:.2f} s, "
            f"`import torch` in a fresh process {torch_import:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="unused: it writes nothing (accepted as every experiment accepts it)")
    args = parser.parse_args()
    print(speed_line(1 if args.smoke_test else 3))


if __name__ == "__main__":
    main()
