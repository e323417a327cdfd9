"""The development pool the label-free objective was chosen on: many short LeJEPA runs on the
bundled digits, drawn at random over λ, learning rate, weight decay, epochs, batch size,
views and projector width, each keeping its label-free criteria (every epoch), the features of
its label-free set, and the cross-validated probe that judges them.

    python experiments/criterion_pool.py --output-dir DIR --views 4  # the 96 runs (~40 min on 2 cores)
    python experiments/criterion_pool.py --output-dir DIR --analyse  # criteria vs the probe
    python experiments/criterion_pool.py --smoke-test                # tiny, for CI

Runs go through ``lejepa_tune.train.train`` directly (no Ray: the pool is about what the
criteria measure, not about the sweep machinery), two processes at a time, one thread each.
The pool's seeds (base seed 1000) are not those of ``label_free_selection.py``'s sweeps: an
objective chosen here is judged there on runs it never saw.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import tempfile
from pathlib import Path

import numpy as np

GROUPS = {
    # name: (number of runs, sampler of overrides)
    "lambda_lr_wd_epochs": 32,
    "batch_size": 16,
    "views": 16,
    "proj_dim": 12,
    "everything": 20,
}
SMOKE = ["data.max_train_samples=128", "data.max_val_samples=60", "model.backbone_kwargs.depth=1",
         "model.proj_hidden_dims=[64]", "loss.num_slices=32", "labelfree.num_images=64", "eval.linear_max_iter=100"]


def draw(group: str, rng: random.Random) -> dict:
    """One run's overrides of the built-in defaults."""
    loguniform = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    cfg = {"train.epochs": 6, "train.batch_size": 64, "loss.lam": 0.05, "optim.lr": 2e-3}
    if group in ("lambda_lr_wd_epochs", "everything"):
        cfg.update({
            "loss.lam": loguniform(0.003, 0.7),
            "optim.lr": loguniform(2e-4, 8e-3),
            "optim.weight_decay": loguniform(1e-3, 0.3),
            "train.epochs": rng.randint(1, 8),
        })
    if group in ("batch_size", "everything"):
        cfg["train.batch_size"] = rng.choice([16, 24, 32, 48, 64, 96, 128, 192, 256])
    if group in ("views", "everything"):
        cfg["views.n_global"] = rng.randint(2, 6)
        cfg["views.n_local"] = rng.choice([0, 0, 2, 4])
    if group in ("proj_dim", "everything"):
        cfg["model.proj_dim"] = rng.choice([4, 8, 16, 32, 64, 128])
        cfg["model.proj_hidden_dims"] = rng.choice([[256], [512, 512], [1024, 1024]])
    if cfg.get("views.n_local", 0):
        cfg["model.backbone_kwargs.dynamic_img_size"] = True
    cfg["train.seed"] = rng.randint(0, 10_000)
    return cfg


def run_one(job: tuple[str, dict, str, list[str]]) -> str:
    name, overrides, out, extra = job
    import shutil

    import torch

    torch.set_num_threads(1)
    from lejepa_tune.config import load_config
    from lejepa_tune.data import build_datasets
    from lejepa_tune.labelfree import LabelFreeSet, embed_views
    from lejepa_tune.models import build_model
    from lejepa_tune.train import LocalSink, train

    out_dir = Path(out) / name
    if (out_dir / "result.json").is_file():
        return name
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + extra
    cfg = load_config(None, [*sets, f"train.output_dir={out_dir}"])
    epochs = []

    class Keep(LocalSink):
        def report(self, metrics, checkpoint):
            epochs.append(metrics)
            super().report(metrics, checkpoint)

    try:
        train(cfg, Keep(cfg, verbose=False))
    except Exception as err:  # a diverged run is a data point too
        (out_dir / "result.json").write_text(json.dumps({"name": name, "overrides": overrides, "error": str(err)}))
        return name
    # The final label-free features, to re-score variants of the criteria offline.
    splits = build_datasets(cfg.data)
    model = build_model(cfg.model, splits.num_classes)
    model.load_state_dict(torch.load(out_dir / "checkpoint" / "state.pt", weights_only=True)["model"])
    feats = embed_views(model, LabelFreeSet(splits.train, cfg.labelfree, cfg.views), torch.device("cpu"), None)
    torch.save({k: v.half() for k, v in feats.items()}, out_dir / "features.pt")
    shutil.rmtree(out_dir / "checkpoint")
    (out_dir / "result.json").write_text(json.dumps({"name": name, "overrides": overrides, "epochs": epochs}))
    return name


def jobs(n_scale: float, seed: int, out: Path, extra: list[str]) -> list[tuple]:
    rng = random.Random(seed)
    todo = []
    for group, n in GROUPS.items():
        for i in range(max(1, round(n * n_scale))):
            todo.append((f"{group}_{i:02d}", draw(group, rng), str(out), extra))
    return todo


def analyse(out: Path) -> None:
    """Spearman of every criterion against the reference, per group of runs and over all, as
    the runs reported it; then the objective's candidates re-scored from the saved features
    (M images, q views), with each group's noise ceiling and the regret of each pick."""
    import torch

    from lejepa_tune.agreement import noise_ceiling, regret, spearman
    from lejepa_tune.evaluate import gaussian_mi, view_nn_accuracy
    from lejepa_tune.metrics import FEATURE_SPACES, LABELFREE_CRITERIA, LABELFREE_MODES, LOSS, REFERENCE_ACC, REFERENCE_CORRECT, SCALED_LOSS, labelfree_key, unpack_bits

    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    runs = [r for r in runs if "epochs" in r]
    groups = sorted({r["name"].rsplit("_", 1)[0] for r in runs})
    member = {g: [i for i, r in enumerate(runs) if g == "all" or r["name"].startswith(g)] for g in [*groups, "all"]}
    acc = np.array([r["epochs"][-1][REFERENCE_ACC] for r in runs])

    def row(name: str, values: list[float], mode: str) -> str:
        x = np.asarray(values, dtype=float)
        return f"{name:30s}" + "".join(f"{spearman(-x[i] if mode == 'min' else x[i], acc[i]):13.2f}" for i in member.values())

    print(f"{len(runs)} runs; Spearman against {REFERENCE_ACC}\n")
    print(f"{'criterion (as reported)':30s}" + "".join(f"{g[:12]:>13s}" for g in member))
    keys = [(LOSS, "min"), (SCALED_LOSS, "min")] + [(labelfree_key(s, c), LABELFREE_MODES[c]) for s in FEATURE_SPACES for c in LABELFREE_CRITERIA]
    for key, mode in keys:
        print(row(key, [r["epochs"][-1].get(key, np.nan) for r in runs], mode))

    feats = [torch.load(out / r["name"] / "features.pt")["backbone"].double() for r in runs]
    print(f"\n{'backbone, re-scored':30s}" + "".join(f"{g[:12]:>13s}" for g in member))
    picks = {}
    for m in (128, 256):
        for q in (2, 4):
            if q > feats[0].shape[1]:
                continue
            for name, fn in (("gmi", gaussian_mi), ("view_nn", view_nn_accuracy)):
                values = [fn(f[:m, :q]) for f in feats]
                picks[f"{name} M={m} q={q}"] = values
                print(row(f"{name} M={m} q={q}", values, "max"))
    print("\nnoise ceiling and regret (points) of the picks, per group")
    for g, rows in member.items():
        bits = np.stack([unpack_bits(runs[i]["epochs"][-1][REFERENCE_CORRECT]) for i in rows])
        regrets = "  ".join(f"{k}: {100 * regret(np.asarray(v)[rows], acc[rows], 'max'):.1f}" for k, v in picks.items() if k.startswith("gmi"))
        print(f"  {g:22s} n={len(rows):3d}  reference {acc[rows].min():.3f}-{acc[rows].max():.3f}  ceiling {noise_ceiling(bits, n_boot=300):.2f}  {regrets}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--analyse", action="store_true", help="only score the criteria of the runs in --output-dir")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--views", type=int, default=4, help="views of each label-free image the runs keep (re-scored with fewer too)")
    args = parser.parse_args()
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_pool_"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.analyse:
        extra = [*(SMOKE if args.smoke_test else []), f"labelfree.num_views={args.views}"]
        todo = jobs(0.1 if args.smoke_test else 1.0, args.seed, out, extra)
        if args.smoke_test:
            todo = [(n, {**o, "train.epochs": 1, "train.batch_size": 32}, d, e) for n, o, d, e in todo[:3]]
        with mp.get_context("spawn").Pool(args.processes) as pool:
            for name in pool.imap_unordered(run_one, todo):
                print("done", name, flush=True)
    analyse(out)


if __name__ == "__main__":
    main()
