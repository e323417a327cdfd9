"""Does the label-free objective lean towards one end of λ? A look at finished sweeps that search
``loss.lam``, with labels used only to judge.

For each sweep: the objective's Spearman ρ with the reference (``eval/linear_acc_cv``); the
trials' rank residuals (rank by the reference minus rank by the objective, over the completed
trials), and their Spearman ρ with log λ and with log learning rate. A positive ρ with log λ means
the reference puts the larger-λ trials higher than the objective does: the objective leans towards
too little SIGReg. Then the choice's λ against the best trial's, and the regret in points.

With eight trials a sweep's ρ is loose (one swapped pair moves it by about 0.05 to 0.3); what
counts is whether the sign holds over several sweeps and seeds.

    python experiments/lambda_lean.py DIR [DIR ...]   # DIR: a sweep directory, or a directory of them
    python experiments/lambda_lean.py --smoke-test    # a synthetic sweep, for CI
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from lejepa_tune.agreement import spearman
from lejepa_tune.metrics import OBJECTIVE, REFERENCE_ACC
from lejepa_tune.records import SweepRecords, TrialRecord, read_records, write_records
from lejepa_tune.report import format_table
from near_ties import sweep_dirs  # this directory's: sweep directories, or the directories holding them

LAM, LR = "loss.lam", "optim.lr"


def lean(records: SweepRecords, name: str) -> dict | None:
    """The figures of one sweep, or ``None`` where it does not search λ or has under 3 trials
    with both numbers."""
    if LAM not in records.searched:
        return None
    done = [t for t in records.trials if t.status == "completed" and math.isfinite(t.metrics.get(OBJECTIVE, math.nan))
            and math.isfinite(t.metrics.get(REFERENCE_ACC, math.nan))]
    if len(done) < 3:
        return None
    obj = np.array([t.metrics[OBJECTIVE] for t in done])
    acc = np.array([t.metrics[REFERENCE_ACC] for t in done])
    residual = rankdata(acc) - rankdata(obj)
    choice, best = done[int(np.argmax(obj))], done[int(np.argmax(acc))]
    lr = [t.params.get(LR) for t in done]
    return {
        "sweep": name, "trials": len(done), "rho": spearman(obj, acc),
        "residual_vs_log_lam": spearman(residual, np.log([t.params[LAM] for t in done])),
        "residual_vs_log_lr": spearman(residual, np.log(lr)) if all(isinstance(v, float) for v in lr) else math.nan,
        "choice_lam": choice.params[LAM], "best_lam": best.params[LAM],
        "regret": 100 * (best.metrics[REFERENCE_ACC] - choice.metrics[REFERENCE_ACC]),
    }


def synthetic(root: Path, n: int = 8, seed: int = 0) -> Path:
    """A finished sweep's records whose reference favours larger λ than its objective does."""
    rng = np.random.default_rng(seed)
    lam, lr = np.exp(rng.uniform(np.log(0.005), np.log(0.5), n)), np.exp(rng.uniform(np.log(3e-4), np.log(5e-3), n))
    quality = -np.log(lam / 0.03) ** 2 + rng.normal(0, 0.3, n)
    trials = tuple(TrialRecord(f"t{i}", "completed", {LAM: float(lam[i]), LR: float(lr[i])},
                               {OBJECTIVE: float(20 + quality[i] - np.log(lam[i])), REFERENCE_ACC: float(0.8 + 0.01 * quality[i])}, epochs=1)
                   for i in range(n))
    write_records(SweepRecords("lambda_lean_smoke", {"search": {LAM: {}, LR: {}}}, trials, str(root / "sweep")))
    return root / "sweep"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="sweep directories, or directories holding them")
    parser.add_argument("--smoke-test", action="store_true", help="a synthetic sweep, for CI")
    parser.add_argument("--output-dir", default=None, help="with --smoke-test: where its records go (default: a temporary directory)")
    args = parser.parse_args(argv)
    dirs = [synthetic(Path(args.output_dir or tempfile.mkdtemp()))] if args.smoke_test else sweep_dirs(args.dirs)
    results = [r for r in (lean(read_records(str(d)), d.name) for d in dirs) if r is not None]
    if not results:
        print("no finished sweep that searches loss.lam was found", file=sys.stderr)
        return 2
    head = ["sweep", "trials", "objective ρ", "residual ρ with log λ", "residual ρ with log lr", "choice λ", "best λ", "regret (points)"]
    rows = [[r["sweep"], r["trials"], f"{r['rho']:.2f}", f"{r['residual_vs_log_lam']:.2f}", f"{r['residual_vs_log_lr']:.2f}",
             f"{r['choice_lam']:.3g}", f"{r['best_lam']:.3g}", f"{r['regret']:.1f}"] for r in results]
    print("residual: rank by the reference minus rank by the objective; ρ > 0 with log λ: the objective undervalues larger λ")
    print(format_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
