"""How well does the label-free pick agree with the linear probe? Two real sweeps on the
bundled digits (2 CPU cores), every criterion scored against eval/linear_acc:

* sweep A varies λ, the learning rate and the number of epochs (as the paper's Figure does);
* sweep B varies the batch size and the number of views (and λ): raw losses are then on
  different scales, which only the fixed-yardstick loss is built to survive.

    python experiments/label_free_selection.py                # the README's numbers (~25 min)
    python experiments/label_free_selection.py --smoke-test   # tiny, for CI
    python experiments/label_free_selection.py --analyse-only --output-dir DIR   # re-score DIR's sweeps

Labels are used only to score the criteria, never to choose.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import ray

from lejepa_tune.report import analyse_sweep, format_table
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.selection import spearman
from lejepa_tune.sweep import run_sweep

# The paper (LeJEPA, arXiv 2511.08544): Spearman between training loss and linear-probe
# accuracy over runs varying λ, lr, weight decay and epochs.
PAPER = {"loss": 0.85, "scaled_loss": 0.99}

SWEEPS = {
    "A_lambda_lr_epochs": {
        "search": {
            "loss.lam": {"type": "loguniform", "low": 0.005, "high": 0.5},
            "optim.lr": {"type": "loguniform", "low": 0.0003, "high": 0.005},
            "train.epochs": {"type": "int", "low": 1, "high": 6},
        },
        "num_samples": 16,
        "base": {"train": {"epochs": 6}},
    },
    "B_batch_views": {
        "search": {
            "train.batch_size": {"type": "choice", "values": [32, 64, 128]},
            "views.n_global": {"type": "choice", "values": [2, 4]},
            "loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.3},
        },
        "num_samples": 10,
        "base": {"train": {"epochs": 4}},
    },
}

SMOKE_BASE = {
    "data": {"max_train_samples": 128, "max_val_samples": 60},
    "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}, "proj_hidden_dims": [64]},
    "loss": {"num_slices": 32},
    "eval": {"linear_max_iter": 100},
}


def build_spec(name: str, sweep: dict, smoke: bool, tracking_uri: str):
    base = {**sweep["base"]}
    search = dict(sweep["search"])
    if smoke:
        base = {**SMOKE_BASE, "train": {"epochs": 1, "batch_size": 32}}
        if "train.epochs" in search:
            search["train.epochs"] = {"type": "int", "low": 1, "high": 2}
            base["train"]["epochs"] = 2
        if "train.batch_size" in search:
            search["train.batch_size"] = {"type": "choice", "values": [16, 32]}
    return sweep_spec_from_dict({
        "name": name,
        "base": base,
        "search": search,
        "tune": {"num_samples": 3 if smoke else sweep["num_samples"], "seed": 0},
        "selection": {"yardstick_batch_size": 32 if smoke else 256},
        "tracking": {"tracking_uri": tracking_uri},
    })


def _latest(root: Path, name: str) -> Path:
    found = sorted((root / "sweeps").glob(f"{name}_*"))
    if not found:
        raise SystemExit(f"{root / 'sweeps'}: no {name} sweep to analyse")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="3 tiny trials per sweep, for CI")
    parser.add_argument("--output-dir", default=None, help="sweeps, MLflow database and results.json (default: a temporary directory)")
    parser.add_argument("--analyse-only", action="store_true", help="re-score the latest sweeps already in --output-dir, without running them")
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_selection_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"

    results = {}
    if args.analyse_only:
        analyses = {name: analyse_sweep(_latest(root, name)) for name in SWEEPS}
        minutes = {name: math.nan for name in SWEEPS}
    else:
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        analyses, minutes = {}, {}
        for name, sweep in SWEEPS.items():
            result = run_sweep(build_spec(name, sweep, args.smoke_test, uri), storage_path=root / "sweeps", include_dashboard=False, verbose=0)
            analyses[name], minutes[name] = result.analysis, result.elapsed_s / 60
        ray.shutdown()
    for name, analysis in analyses.items():
        sel = analysis.selection
        done = [t for t in analysis.trials if t.status == "completed"]
        acc = [t.metrics.get("eval/linear_acc", math.nan) for t in done]
        # The yardstick's two parts on their own (lower is better for both).
        parts = {key: spearman([-t.metrics.get(key, math.nan) for t in done], acc) for key in ("yardstick/inv", "yardstick/sigreg")}
        results[name] = {
            "sweep_dir": str(analysis.sweep_dir),
            "trials": len(analysis.trials),
            "completed": len(done),
            "minutes": minutes[name],
            "linear_acc_range": [min(acc), max(acc)] if acc else None,
            "yardstick_parts_spearman": parts,
            "default": sel.default,
            "criteria": {
                c: {
                    "valid": sel.validity[c].valid,
                    "n": sel.agreements[c].n,
                    "spearman": sel.agreements[c].spearman,
                    "spearman_ci": list(sel.agreements[c].spearman_ci),
                    "kendall": sel.agreements[c].kendall,
                    "regret": sel.agreements[c].regret,
                    "top3_overlap": sel.agreements[c].top3_overlap,
                }
                for c in sel.criteria
            },
        }
    (root / "results.json").write_text(json.dumps(results, indent=2))

    for name, r in results.items():
        took = f" in {r['minutes']:.1f} min" if math.isfinite(r["minutes"]) else ""
        print(f"\n{name}: {r['completed']}/{r['trials']} trials completed{took}; "
              f"eval/linear_acc from {r['linear_acc_range'][0]:.3f} to {r['linear_acc_range'][1]:.3f}; default criterion: {r['default']}")
        rows = []
        for c, v in r["criteria"].items():
            lo, hi = v["spearman_ci"]
            rows.append([c, "yes" if v["valid"] else "NO", v["n"], v["spearman"], f"[{lo:.2f}, {hi:.2f}]", v["kendall"], v["regret"], v["top3_overlap"], PAPER.get(c, "-")])
        for key, rho in r["yardstick_parts_spearman"].items():
            rows.append([f"  ({key} alone)", "", r["completed"], rho, "", "", "", "", "-"])
        print(format_table(["criterion", "valid", "n", "spearman", "95% CI", "kendall", "regret", "top3", "paper spearman"], rows))
    print(f"\nresults: {root / 'results.json'}")


if __name__ == "__main__":
    main()
