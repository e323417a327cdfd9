"""Does the label-free choice agree with the labelled reference? Real sweeps on the bundled
digits (2 CPU cores), run by the tool itself (Ray Tune + Optuna on the declared objective),
each criterion judged against the cross-validated linear probe ``eval/linear_acc_cv``:

* A: λ, learning rate, weight decay and epochs;
* B: the batch size alone, at a fixed λ;
* C: the number of views alone (global and local);
* D: batch size x views x λ x projector dim.

Every sweep type runs with two seeds (the search's and the training's), 12 trials each. The
seeds (1 and 2) are not those of ``criterion_pool.py`` (1000), on which the objective was
chosen: these sweeps judge it on runs it never saw. ``--seeds`` runs others.

    python experiments/label_free_selection.py --output-dir DIR                  # the README's table (~1 h)
    python experiments/label_free_selection.py --output-dir DIR --seeds 3        # one more seed (~26 min)
    python experiments/label_free_selection.py --output-dir DIR --analyse-only   # re-score DIR's sweeps
    python experiments/label_free_selection.py --smoke-test                      # tiny, for CI

Labels are used only to judge the criteria, never to choose.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import ray

from lejepa_tune.analysis import analyse
from lejepa_tune.records import read_records
from lejepa_tune.report import format_table
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.sweep import init_ray, run_sweep

SWEEPS = {
    "A_lambda_lr_wd_epochs": {
        "loss.lam": {"type": "loguniform", "low": 0.005, "high": 0.5},
        "optim.lr": {"type": "loguniform", "low": 0.0003, "high": 0.005},
        "optim.weight_decay": {"type": "loguniform", "low": 0.001, "high": 0.3},
        "train.epochs": {"type": "int", "low": 1, "high": 6},
    },
    "B_batch_size": {
        "train.batch_size": {"type": "qint", "low": 16, "high": 256, "step": 16},
    },
    "C_views": {
        "views.n_global": {"type": "int", "low": 2, "high": 6},
        "views.n_local": {"type": "choice", "values": [0, 2, 4]},
    },
    # Few batch sizes and view counts, so that trials share them and the Spearman within groups
    # of equal batch size and views is defined.
    "D_batch_views_lambda_proj": {
        "train.batch_size": {"type": "choice", "values": [64, 128, 256]},
        "views.n_global": {"type": "choice", "values": [2, 4]},
        "loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.3},
        "model.proj_dim": {"type": "choice", "values": [16, 32, 64, 128]},
    },
}
SEEDS = (1, 2)
TRIALS = 12
BASE = {"train": {"epochs": 6}}
# Local views (16 px) need a ViT that takes other image sizes.
VIT_ANY_SIZE = {"model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "dynamic_img_size": True}}}
SMOKE_BASE = {
    "data": {"max_train_samples": 128, "max_val_samples": 60},
    "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3, "dynamic_img_size": True}, "proj_hidden_dims": [64]},
    "train": {"epochs": 1, "batch_size": 32},
    "loss": {"num_slices": 32},
    "labelfree": {"num_images": 64},
    "eval": {"linear_max_iter": 100},
}
# One tiny sweep over λ and batch size: the script's whole path, in CI.
SMOKE_SEARCH = {"A_lambda_lr_wd_epochs": {"loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.5},
                                          "train.batch_size": {"type": "choice", "values": [16, 32]}}}
# What the README's table shows of each criterion; all are in results.json.
SHOWN = ("objective", "loss", "scaled_loss", "backbone/gmi", "backbone/lidar", "backbone/rankme", "backbone/inv_ratio", "backbone/view_nn", "embed/gmi", "embed/sigreg")


def build_spec(name: str, seed: int, smoke: bool, tracking_uri: str):
    search = SMOKE_SEARCH.get(name, {}) if smoke else SWEEPS[name]
    base = SMOKE_BASE if smoke else {**BASE, **(VIT_ANY_SIZE if "views.n_local" in search else {})}
    base = {**base, "train": {**base["train"], "seed": seed}}
    return sweep_spec_from_dict({
        "name": f"{name}_seed{seed}",
        "base": base,
        "search": search,
        "tune": {"num_samples": 2 if smoke else TRIALS, "seed": seed},
        "tracking": {"tracking_uri": tracking_uri},
    })


def summarise(records) -> dict:
    """Per criterion: validity, Spearman with its interval, Kendall, within-group Spearman,
    regret and top-3 overlap; and the sweep's noise ceiling, reference range and costs."""
    analysis = analyse(records)
    sel = analysis.selection
    done = [t for t in records.trials if t.status == "completed"]
    acc = [t.metrics["eval/linear_acc_cv"] for t in done]
    ratios = [t.metrics["time/labelfree_s"] / t.metrics["time/epoch_s"] for t in done if t.metrics.get("time/epoch_s")]
    return {
        "sweep_dir": records.sweep_dir,
        "minutes": records.elapsed_s / 60,
        "trials": len(records.trials),
        "completed": len(done),
        "reference_range": [min(acc), max(acc)] if acc else None,
        "noise_ceiling": sel.noise_ceiling,
        "choice": sel.choice,
        "best": sel.best_by_reference,
        "labelfree_cost": [min(ratios), sum(ratios) / len(ratios), max(ratios)] if ratios else None,
        "warnings": list(analysis.warnings),
        "criteria": {
            c: {
                "valid": sel.validity[c].valid,
                "n": sel.agreements[c].n,
                "spearman": sel.agreements[c].spearman,
                "spearman_ci": list(sel.agreements[c].spearman_ci),
                "kendall": sel.agreements[c].kendall,
                "within": sel.agreements[c].within,
                "regret": sel.agreements[c].regret,
                "top3_overlap": sel.agreements[c].top3_overlap,
            }
            for c in sel.criteria
        },
    }


def _f(x: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(results: dict, seeds: list[int]) -> str:
    """The README's table: one row per sweep type and criterion, the seeds side by side."""
    lines = [f"| sweep | criterion | valid | {' | '.join(f'ρ seed {s} (95% CI)' for s in seeds)} | τ | within-group ρ | regret (points) | top-3 |",
             "|---" * (len(seeds) + 7) + "|"]
    for sweep in SWEEPS:
        runs = [results[f"{sweep}_seed{s}"] for s in seeds if f"{sweep}_seed{s}" in results]
        if not runs:
            continue
        ceiling = " / ".join(_f(r["noise_ceiling"]) for r in runs)
        ranges = " / ".join(f"{lo:.3f}–{hi:.3f}" for lo, hi in (r["reference_range"] for r in runs))
        lines.append(f"| **{sweep}** | noise ceiling {ceiling}; reference {ranges} |" + " |" * (len(seeds) + 5))
        for c in SHOWN:
            cells = [r["criteria"][c] for r in runs]
            rho = [f"{_f(v['spearman'])} ({_f(v['spearman_ci'][0])}, {_f(v['spearman_ci'][1])})" for v in cells]
            name = f"**{c}**" if c == "objective" else c
            lines.append(
                f"| {sweep[0]} | {name} | {'yes' if cells[0]['valid'] else 'no'} | {' | '.join(rho + [''] * (len(seeds) - len(rho)))} | "
                f"{' / '.join(_f(v['kendall']) for v in cells)} | {' / '.join(_f(v['within']) for v in cells)} | "
                f"{' / '.join(_f(100 * v['regret'], 1) for v in cells)} | {' / '.join(_f(v['top3_overlap']) for v in cells)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="one tiny sweep of 2 trials, for CI")
    parser.add_argument("--output-dir", default=None, help="sweeps, MLflow database and results.json (default: a temporary directory)")
    parser.add_argument("--analyse-only", action="store_true", help="re-score the sweeps already in --output-dir, without running them")
    parser.add_argument("--address", default=None, help="a running Ray cluster to join (default: start one on this machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help=f"the seeds to run every sweep type with (default: {' '.join(map(str, SEEDS))}, the README's table)")
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_selection_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    names = list(SMOKE_SEARCH) if args.smoke_test else list(SWEEPS)
    seeds = args.seeds[:1] if args.smoke_test else args.seeds

    results = {}
    if not args.analyse_only:
        init_ray(args.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    for name in names:
        for seed in seeds:
            key = f"{name}_seed{seed}"
            done = sorted((root / "sweeps").glob(f"{key}_*/records.json"))
            if done:  # already run (a resumed study, or --analyse-only)
                records = read_records(str(done[-1]))
            elif args.analyse_only:
                continue
            else:
                records = run_sweep(build_spec(name, seed, args.smoke_test, uri), storage_path=str(root / "sweeps"), include_dashboard=False, verbose=0)
            results[key] = summarise(records)
            print(f"{key}: {results[key]['completed']}/{results[key]['trials']} trials in {results[key]['minutes']:.1f} min; "
                  f"objective ρ = {_f(results[key]['criteria']['objective']['spearman'])}, regret {_f(100 * results[key]['criteria']['objective']['regret'], 1)} points, "
                  f"noise ceiling {_f(results[key]['noise_ceiling'])}", flush=True)
    if ray.is_initialized():
        ray.shutdown()
    (root / "results.json").write_text(json.dumps(results, indent=2))

    rows = []
    for key, r in results.items():
        o, sl = r["criteria"]["objective"], r["criteria"]["scaled_loss"]
        rows.append([key, r["completed"], f"{r['reference_range'][0]:.3f}-{r['reference_range'][1]:.3f}", r["noise_ceiling"], o["spearman"],
                     f"[{_f(o['spearman_ci'][0])}, {_f(o['spearman_ci'][1])}]", o["within"], 100 * o["regret"], o["top3_overlap"],
                     sl["spearman"], 100 * sl["regret"], None if r["labelfree_cost"] is None else r["labelfree_cost"][1]])
    print()
    print(format_table(["sweep", "n", "reference", "ceiling", "objective ρ", "95% CI", "within ρ", "regret (pt)", "top3",
                        "scaled_loss ρ", "its regret (pt)", "label-free cost"], rows))
    print()
    print(markdown(results, seeds))
    print(f"\nresults: {root / 'results.json'}")


if __name__ == "__main__":
    main()
