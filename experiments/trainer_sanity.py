"""Does the default LeJEPA run learn? The default config on the bundled digits, against the
same architecture at random initialisation (0 epochs) and against λ = 0 (no SIGReg: the
embeddings should collapse).

    python experiments/trainer_sanity.py               # the numbers in the README (~6 min on 2 cores)
    python experiments/trainer_sanity.py --smoke-test  # a tiny version, run in CI
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lejepa_tune.config import load_config
from lejepa_tune.report import format_table
from lejepa_tune.train import train

SMOKE = ["train.epochs=1", "data.max_train_samples=128", "data.max_val_samples=60", "train.batch_size=32", "loss.num_slices=32", "labelfree.num_images=64"]
COLUMNS = {
    "train/loss": "train/loss",
    "eval/linear_acc": "linear (val)",
    "eval/linear_acc_cv": "linear (cv)",
    "eval/knn_acc": "kNN",
    "labelfree/objective": "objective",
    "labelfree/embed/rankme": "RankMe (embed)",
    "labelfree/embed/std": "std (embed)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--output-dir", default=None, help="where the runs are written (default: a temporary directory)")
    args = parser.parse_args()
    base = SMOKE if args.smoke_test else []
    runs = {
        "random init (0 epochs)": [*base, "train.epochs=0"],
        "default": base,
        "lambda = 0 (no SIGReg)": [*base, "loss.lam=0"],
    }
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_sanity_"))
    rows = []
    for i, (name, overrides) in enumerate(runs.items()):
        cfg = load_config(None, [*overrides, f"train.output_dir={root / f'run{i}'}", "train.save_checkpoint=false"])
        start = time.perf_counter()
        metrics = train(cfg)
        rows.append([name, cfg.train.epochs, cfg.loss.lam, *(metrics.get(k) for k in COLUMNS), time.perf_counter() - start])
    print()
    print(format_table(["run", "epochs", "lambda", *COLUMNS.values(), "seconds"], rows))


if __name__ == "__main__":
    main()
