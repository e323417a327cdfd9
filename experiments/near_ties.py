"""Does the near-tie warning find the label-free choice's misses? A study of finished sweeps.

The label-free pick is the completed trial with the highest objective (the backbone's Gaussian
mutual information between views, on the sweep's fixed label-free set of images). The label-free
study's misses (``label_free_selection.py``) were picks whose runner-up was a few per cent behind
on the objective. After its last epoch every trial now also measures its objective on resamples
of the label-free images, the same resamples in every trial (``labelfree.resamples``), and the
analysis warns of a *near-tie* when the choice is above another trial on fewer than 95 % of them
(``selection.near_ties``). This replays that on sweeps, with labels used only to judge:

* every completed trial's final checkpoint is loaded and its label-free features are computed
  again (the recomputed objective is checked against the one the trial reported), so sweeps run
  before the resamples existed can be studied too;
* their resamples, and the near-ties ``lejepa-tune`` reports from them;
* against the labelled reference (``eval/linear_acc_cv``): the choice's regret, and the regret of
  the best of the choice and its near-ties, which is what probing them would give.

    python experiments/near_ties.py DIR [DIR ...]      # DIR: a sweep directory, or a directory of them
    python experiments/near_ties.py --smoke-test       # two tiny trials, for CI

Run it on the output of ``label_free_selection.py --output-dir DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lejepa_tune.config import load_config
from lejepa_tune.data import build_datasets
from lejepa_tune.labelfree import LabelFreeSet, embed_views, objective_of, resampled_objective
from lejepa_tune.metrics import OBJECTIVE, OBJECTIVE_RESAMPLES, REFERENCE_ACC, pack_floats, unpack_floats
from lejepa_tune.models import build_model
from lejepa_tune.records import read_records
from lejepa_tune.report import format_table
from lejepa_tune.selection import NEAR_TIE_LEVEL, choose, near_ties


def labelfree_features(checkpoint: Path, cache: dict, num_images: int | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """The features of the checkpoint's label-free views (:func:`lejepa_tune.labelfree.embed_views`,
    as the trial measured them after its last epoch), and the seed of its resamples. With
    ``num_images``: on that many images instead (at most the training split), drawn the same way."""
    cfg = load_config(checkpoint / "config.yaml")
    key = json.dumps([repr(cfg.data), repr(cfg.labelfree), repr(cfg.views if cfg.labelfree.views is None else cfg.labelfree.views), num_images])
    if key not in cache:
        splits = build_datasets(cfg.data)
        lf = cfg.labelfree if num_images is None else dataclasses.replace(cfg.labelfree, num_images=min(num_images, len(splits.train)))
        cache[key] = LabelFreeSet(splits.train, lf, cfg.views), splits.num_classes
    lfset, num_classes = cache[key]
    model = build_model(cfg.model, num_classes)
    model.backbone.load_state_dict(torch.load(checkpoint / "encoder.pt", map_location="cpu", weights_only=True))
    model.projector.load_state_dict(torch.load(checkpoint / "projector.pt", map_location="cpu", weights_only=True))
    return embed_views(model, lfset, torch.device("cpu"), None), cfg.labelfree.seed


def study(sweep_dir: Path, n_resamples: int, level: float) -> dict:
    """The sweep's near-ties as ``lejepa-tune`` reports them (``selection.near_ties``), from
    resamples recomputed from every completed trial's checkpoint, and what probing them gives."""
    records = read_records(str(sweep_dir))
    done = [t for t in records.trials if t.status == "completed" and math.isfinite(t.metrics.get(OBJECTIVE, math.nan)) and t.checkpoint]
    pick = choose(done, "objective")
    cache: dict = {}
    resampled, drift, stored = [], 0.0, []
    for t in done:
        features, seed = labelfree_features(Path(t.checkpoint), cache)
        drift = max(drift, abs(objective_of(features) - t.metrics[OBJECTIVE]) / abs(t.metrics[OBJECTIVE]))
        values = resampled_objective(features, n_resamples, seed)
        if t.objective_resamples and unpack_floats(t.objective_resamples).shape == values.shape:  # what the trial itself measured
            stored.append(float(np.max(np.abs(unpack_floats(t.objective_resamples) - values) / np.abs(values))))
        resampled.append(dataclasses.replace(t, details={**t.details, OBJECTIVE_RESAMPLES: pack_floats(values)}))
    ties = near_ties(resampled, pick.trial_id, "objective", records.searched, level)
    acc = {t.trial_id: t.metrics[REFERENCE_ACC] for t in done}
    best = max(acc.values())
    # The runner-up: the best other encoder (a configuration tried twice trains the same one).
    runner_up = max((t for t in done if t.metrics[OBJECTIVE] != pick.metrics[OBJECTIVE]), key=lambda t: t.metrics[OBJECTIVE], default=None)
    mine = unpack_floats(resampled[done.index(pick)].details[OBJECTIVE_RESAMPLES])
    theirs = unpack_floats(resampled[done.index(runner_up)].details[OBJECTIVE_RESAMPLES]) if runner_up else None
    return {
        "sweep": sweep_dir.name,
        "trials": len(done),
        "regret": 100 * (best - acc[pick.trial_id]),
        "gap": (pick.metrics[OBJECTIVE] - runner_up.metrics[OBJECTIVE]) / abs(pick.metrics[OBJECTIVE]) if runner_up else math.nan,
        "runner_up_beaten": float(np.mean(mine > theirs)) if runner_up else math.nan,
        "tied": ties,
        "regret_if_tied_probed": 100 * (best - max(acc[i] for i in [pick.trial_id, *ties])),
        "recomputed_drift": drift,
        "stored_drift": max(stored) if stored else math.nan,  # nan: the trials predate the resamples
    }


def sweep_dirs(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if (p / "records.json").is_file():
            found.append(p)
        else:
            found += sorted(d.parent for d in p.rglob("records.json") if (d.parent / "tune").is_dir())
    return found


def smoke(output_dir: str | None) -> list[Path]:
    """Two tiny trials trained here, without Ray, written down as a finished sweep's records."""
    from label_free_selection import SMOKE_BASE
    from lejepa_tune.config import config_from_dict
    from lejepa_tune.records import SweepRecords, TrialRecord, write_records
    from lejepa_tune.train import LocalSink, train

    root = Path(output_dir or tempfile.mkdtemp(prefix="near_ties_")).resolve()
    trials = []
    for i, lam in enumerate((0.02, 0.2)):
        cfg = config_from_dict({**SMOKE_BASE, "loss": {**SMOKE_BASE["loss"], "lam": lam}, "train": {**SMOKE_BASE["train"], "output_dir": str(root / f"t{i}")},
                                "labelfree": {**SMOKE_BASE["labelfree"], "resamples": 20}})
        metrics = train(cfg, LocalSink(cfg, verbose=False))
        trials.append(TrialRecord(f"t{i}", "completed", {"loss.lam": lam}, {k: v for k, v in metrics.items() if not isinstance(v, str)},
                                  {k: v for k, v in metrics.items() if isinstance(v, str)}, checkpoint=str(root / f"t{i}" / "checkpoint"), epochs=1))
    records = SweepRecords("near_ties_smoke", {"search": {"loss.lam": {}}}, tuple(trials), str(root / "sweep"))
    write_records(records)
    return [root / "sweep"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="sweep directories, or directories holding them")
    parser.add_argument("--resamples", type=int, default=200, help="paired resamples of the label-free images (the default of labelfree.resamples)")
    parser.add_argument("--level", type=float, default=NEAR_TIE_LEVEL, help="a trial the choice is above on fewer resamples than this is a near-tie")
    parser.add_argument("--json", help="also write every sweep's figures here")
    parser.add_argument("--smoke-test", action="store_true", help="two tiny trials, trained here, for CI")
    parser.add_argument("--output-dir", default=None, help="with --smoke-test: where its trials go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.resamples = 20
        dirs = smoke(args.output_dir)
    else:
        dirs = sweep_dirs(args.dirs)
    if not dirs:
        print("no sweep directories found", file=sys.stderr)
        return 2
    results = [study(d, args.resamples, args.level) for d in dirs]
    head = ["sweep", "trials", "regret (points)", "objective gap to runner-up", "choice above runner-up", "near-ties",
            "regret probing them", "recomputed objective drift", "trials' own resamples drift"]
    rows = [[r["sweep"], r["trials"], f"{r['regret']:.1f}", f"{r['gap']:.1%}", f"{r['runner_up_beaten']:.2f}", len(r["tied"]),
             f"{r['regret_if_tied_probed']:.1f}", f"{r['recomputed_drift']:.1e}", f"{r['stored_drift']:.1e}"] for r in results]
    print(f"{args.resamples} paired resamples of the label-free images; near-tie: the choice is above it on fewer than {args.level:.0%} of them")
    print(format_table(head, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
