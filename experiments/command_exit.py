"""What the ``lejepa-tune`` command saves by ending without the interpreter's teardown
(``cli.console``), side by side in one run.

Each command runs in a fresh process two ways, rounds alternating: as the installed command
runs it (``console()``: main, the exit handlers, the streams flushed, ``os._exit``), and with
the ordinary exit (``sys.exit(main())``: the same, then the interpreter frees every object one
by one). For each it reports the median seconds from the command's last line of output to the
end of its process, and its whole wall time.

The commands: ``validate`` of the shipped default space, ``run`` of that space cut to one trial
of one epoch (its own local Ray, no dashboard), and ``report`` of that sweep.

    python experiments/command_exit.py                 # 3 rounds (~3 min on 2 cores)
    python experiments/command_exit.py --smoke-test    # `--help`, one round, for CI
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lejepa_tune.report import format_table

ROOT = Path(__file__).resolve().parents[1]
EXITS = {
    "console() (the command)": "from lejepa_tune.cli import console; console()",
    "sys.exit(main()) (ordinary)": "import sys; from lejepa_tune.cli import main; sys.exit(main())",
}


def timed(exit_code: str, argv: list[str], cwd: Path) -> tuple[float, float]:
    """``(seconds from the last line of output to the process's end, wall seconds)`` of
    ``lejepa-tune ARGV`` run with the exit ``exit_code``."""
    code = f"import sys; sys.argv = ['lejepa-tune', *{argv!r}]; {exit_code}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed, to time the last one
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last, lines = start, []
    for line in proc.stdout:
        last = time.perf_counter()
        lines.append(line)
    if proc.wait() != 0:
        raise RuntimeError(f"lejepa-tune {' '.join(argv)} exited {proc.returncode}:\n{''.join(lines[-30:])}")
    end = time.perf_counter()
    return end - last, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_exit_"))
    root.mkdir(parents=True, exist_ok=True)
    space = str(ROOT / "search_spaces" / "lambda_sweep.yaml")
    rounds = 1 if args.smoke_test else args.rounds
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for name, exit_code in EXITS.items():
            cwd = root / f"round{r}" / name.split()[0].strip("()")
            cwd.mkdir(parents=True, exist_ok=True)
            if args.smoke_test:  # the machinery alone: a command that imports nothing heavy
                commands = {"--help": ["--help"]}
            else:
                commands = {
                    "validate": ["validate", space],
                    "run (1 trial, 1 epoch)": ["run", space, "--num-samples", "1", "--set", "train.epochs=1", "--no-dashboard",
                                               "--storage-path", str(cwd / "sweeps"), "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"],
                }
            for command, argv in commands.items():
                results.setdefault((command, name), []).append(timed(exit_code, argv, cwd))
            if not args.smoke_test:
                (sweep,) = (cwd / "sweeps").iterdir()
                results.setdefault(("report", name), []).append(timed(exit_code, ["report", str(sweep), "--output-dir", str(cwd / "report")], cwd))
    order = list(dict.fromkeys(command for command, _ in results))
    rows = [[command, name, f"{statistics.median(t for t, _ in v):.2f}", f"{statistics.median(w for _, w in v):.2f}",
             " ".join(f"{t:.2f}" for t, _ in v)] for (command, name), v in sorted(results.items(), key=lambda kv: order.index(kv[0][0]))]
    print(f"{rounds} round(s), alternating; medians\n")
    print(format_table(["command", "exit", "last line to end (s)", "wall (s)", "last line to end, per round"], rows))


if __name__ == "__main__":
    main()
