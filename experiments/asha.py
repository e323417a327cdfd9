"""ASHA, measured: the same space (``search_spaces/full_sweep.yaml``: λ, views, projector dim,
learning rate, batch size) searched with and without early stopping, at the same number of
trials and seed, both on the label-free objective. For each: the compute used (trial-epochs
trained), the trial starts beyond the first (a ``sha`` trial is started again after each rung it
waited at), the wall time, and the regret of the label-free choice against the reference.

    python experiments/asha.py --output-dir DIR            # the README's table (~1 h on 2 cores)
    python experiments/asha.py --smoke-test                # tiny, for CI
    python experiments/asha.py --output-dir DIR --set tune.reduction_factor=4   # another ASHA setting
    python experiments/asha.py --output-dir DIR --set tune.searcher=random      # random search: FIFO and ASHA train the same trials
    python experiments/asha.py --output-dir DIR --schedulers none               # the FIFO sweeps alone (for asha_replay.py)
    python experiments/asha.py --output-dir DIR --schedulers sha --set tune.reduction_factor=2   # synchronous successive halving instead
    python experiments/asha.py --output-dir DIR --schedulers sha --set tune.reduction_factor=2 tune.cohorts=2   # ... in two cohorts

Sweeps already finished in ``DIR`` (by name) are read back, not run again: a FIFO run does not
depend on ASHA's settings, so one can be copied in from another output directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ray

from lejepa_tune.analysis import analyse
from lejepa_tune.metrics import EPOCH, REFERENCE_ACC
from lejepa_tune.records import read_records
from lejepa_tune.report import format_table
from lejepa_tune.search_space import load_sweep_spec
from lejepa_tune.sweep import init_ray, run_sweep

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "full_sweep.yaml"
SMOKE = ["data.max_train_samples=256", "data.max_val_samples=60", "labelfree.num_images=64", "model.backbone_kwargs.depth=1",
         "train.epochs=2", "tune.num_samples=1", "train.batch_size=32", "tune.grace_period=1"]


def run(root: Path, name: str, overrides: list[str]):
    done = sorted((root / "sweeps").glob(f"{name}_*/records.json"))
    if done:
        return read_records(str(done[-1]))
    spec = load_sweep_spec(SPACE, [*overrides, f"name={name}", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"])
    return run_sweep(spec, storage_path=str(root / "sweeps"), verbose=0)


def resumes(sweep_dir: str) -> int:
    """How many times the sweep's trials were started again (a ``sha`` trial after its pause at a
    rung): the epochs Tune's results of a trial hold twice, since a resumed trial reports its
    checkpoint's epoch again."""
    count = 0
    for path in Path(sweep_dir).glob("tune/*/result.json"):
        epochs = [json.loads(line).get(EPOCH) for line in path.read_text().splitlines() if line.strip()]
        count += len(epochs) - len(set(epochs))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schedulers", nargs="+", default=["none", "asha"], choices=["none", "asha", "sha"],
                        help="which sweeps to run per seed (default both; FIFO alone feeds asha_replay.py)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of the space for every run")
    parser.add_argument("--address", default=None, help="a running Ray cluster to join (default: start one on this machine)")
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_asha_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    init_ray(address=args.address, logging_level="ERROR", log_to_driver=False)
    rows, results = [], {}
    for seed in args.seeds[:1] if args.smoke_test else args.seeds:
        for scheduler in ("asha",) if args.smoke_test else args.schedulers:
            name = f"full_{scheduler}_seed{seed}"
            records = run(root, name, [*(SMOKE if args.smoke_test else []), *args.set, f"tune.scheduler={scheduler}", f"tune.seed={seed}", f"train.seed={seed}"])
            analysis = analyse(records)
            epochs, full = records.epochs()
            a = analysis.selection.agreements["objective"]
            reference = {t.trial_id: t.metrics.get(REFERENCE_ACC) for t in records.trials}
            pick, best = reference.get(analysis.selection.choice), reference.get(analysis.selection.best_by_reference)
            results[name] = {"trial_epochs": epochs, "full_epochs": full, "minutes": records.elapsed_s / 60, "regret": a.regret,
                             "spearman": a.spearman, "completed": sum(t.status == "completed" for t in records.trials), "trials": len(records.trials),
                             "pick_reference": pick, "best_reference": best, "resumes": resumes(records.sweep_dir)}
            rows.append([name, f"{results[name]['completed']}/{len(records.trials)}", epochs, f"{epochs / full:.0%}", results[name]["resumes"],
                         records.elapsed_s / 60, 100 * a.regret, a.spearman, pick, best])
    ray.shutdown()
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(["sweep", "completed", "trial-epochs", "of all", "resumes", "minutes", "regret (points)", "objective ρ (completed)",
                        "its pick's reference accuracy", "best finished trial's"], rows))


if __name__ == "__main__":
    main()
