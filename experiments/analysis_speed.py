"""What ranking all bootstrap resamples at once saves in a sweep's analysis, side by side in
one run.

A sweep's analysis (``lejepa-tune report``, and the end of ``lejepa-tune run``) gives every
label-free criterion a bootstrap interval of its Spearman ρ against the probe, and the sweep a
noise ceiling: 1000 resamples each. Both are timed two ways, rounds alternating, on random
trials with ties: as ``agreement.py`` computes them (every resample ranked in one array), and
one resample at a time (``bootstrap_ci`` given any statistic other than ``spearman``; the noise
ceiling as its definition's loop). Both ways draw the same resamples, and the script checks
they give the same numbers. It reports the median seconds of each, their ratio, and the
analysis time this saves for a sweep with as many criteria as ``selection.py`` defines.

    python experiments/analysis_speed.py                # trials 8, 16, 32, 64; 3 rounds (~2 min)
    python experiments/analysis_speed.py --smoke-test   # 8 trials, 100 resamples, one round
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from lejepa_tune.agreement import bootstrap_ci, noise_ceiling, spearman
from lejepa_tune.report import format_table
from lejepa_tune.selection import CRITERIA


def one_at_a_time_ceiling(correct: np.ndarray, n_boot: int, seed: int) -> float:
    """The noise ceiling's definition as a loop: one resample of the images, one ρ."""
    acc = correct.mean(1)
    rng = np.random.default_rng(seed)
    rhos = [spearman(acc, correct[:, rng.integers(0, correct.shape[1], size=correct.shape[1])].mean(1)) for _ in range(n_boot)]
    return float(np.nanmean(rhos))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="unused: the script writes nothing")
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--images", type=int, default=360, help="probe images per trial (digits' validation split: 360)")
    args = parser.parse_args()
    if args.smoke_test:
        args.trials, args.rounds, args.n_boot = [8], 1, 100

    rng = np.random.default_rng(0)
    rows = []
    for n in args.trials:
        accuracy = np.round(rng.uniform(0.6, 0.95, n), 2)  # ties, as probe accuracies have
        criterion = np.round(-accuracy + rng.normal(0, 0.05, n), 2)
        correct = rng.random((n, args.images)) < accuracy[:, None]
        times = {"ci at once": [], "ci one at a time": [], "ceiling at once": [], "ceiling one at a time": []}
        for _ in range(args.rounds):
            t, fast_ci = timed(bootstrap_ci, criterion, accuracy, spearman, n_boot=args.n_boot)
            times["ci at once"].append(t)
            t, slow_ci = timed(bootstrap_ci, criterion, accuracy, lambda x, y: spearman(x, y), n_boot=args.n_boot)
            times["ci one at a time"].append(t)
            t, fast_ceiling = timed(noise_ceiling, correct, n_boot=args.n_boot, seed=0)
            times["ceiling at once"].append(t)
            t, slow_ceiling = timed(one_at_a_time_ceiling, correct, args.n_boot, 0)
            times["ceiling one at a time"].append(t)
            same = all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip((*fast_ci, fast_ceiling), (*slow_ci, slow_ceiling)))
            if not same:
                raise SystemExit(f"{n} trials: the two ways disagree: {fast_ci, fast_ceiling} against {slow_ci, slow_ceiling}")
        med = {k: statistics.median(v) for k, v in times.items()}
        saved = len(CRITERIA) * (med["ci one at a time"] - med["ci at once"]) + med["ceiling one at a time"] - med["ceiling at once"]
        rows.append([
            str(n),
            f"{med['ci at once'] * 1e3:.1f}", f"{med['ci one at a time'] * 1e3:.0f}", f"{med['ci one at a time'] / med['ci at once']:.0f}x",
            f"{med['ceiling at once'] * 1e3:.1f}", f"{med['ceiling one at a time'] * 1e3:.0f}", f"{med['ceiling one at a time'] / med['ceiling at once']:.0f}x",
            f"{saved:.1f}",
        ])
    print(f"{args.n_boot} resamples, {args.images} probe images per trial, {len(CRITERIA)} criteria, median of {args.rounds} rounds; the two ways gave the same numbers")
    print(format_table(
        ["trials", "interval ms (at once)", "interval ms (one at a time)", "ratio",
         "ceiling ms (at once)", "ceiling ms (one at a time)", "ratio", "analysis s saved"],
        rows,
    ))


if __name__ == "__main__":
    main()
