"""Would a debiased objective, or a larger label-free set, pick better? A replay on finished sweeps,
with labels used only to judge.

The objective's estimate is biased upwards by directions that carry only view noise
(``objective_bias.py``). Two remedies are replayed here on every completed trial of finished
sweeps, from its final checkpoint, beside the objective as the trial reported it:

* **debiased**: the same quantity, the Gaussian mutual information between a view and its image,
  ``½ [log det Σ_v − log det Σ_w]`` (``Σ_v``: the covariance of one view over the images, ``Σ_w``:
  the within-image covariance), with each log-determinant corrected by its exact Wishart bias
  (``Σᵢ ψ((n − i + 1)/2) + D log(2/n)`` for ``n`` degrees of freedom) and without clamping the
  eigenvalues at 0. Unbiased for Gaussian features of full rank (``objective_bias.py`` shows it
  next to the objective); where directions are collapsed below the ridge the correction, applied
  over all ``D`` with two different ``n``, is off unless ``q = 2`` (32 informative directions
  beside 64 collapsed read 32.4 nats for a true 25.8 with 4 views). It can be negative, and it
  needs ``M − 1`` and ``M(q − 1)`` at least ``D``;
* **larger set**: the objective, and the debiased one, on ``--images`` label-free images instead
  of the sweep's (the same seed and views recipe, so still the same pixels for every trial).

For each sweep and variant: Spearman ρ with the reference (``eval/linear_acc_cv``) and the regret
of the variant's pick, in points. The trials were proposed by Optuna from the reported objective,
so a replay judges another criterion's choice among the same trials, not a sweep it would have run.

    python experiments/objective_variants.py DIR [DIR ...]   # DIR: a sweep directory, or a directory of them
    python experiments/objective_variants.py --smoke-test    # two tiny trials, for CI
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.special import digamma

from lejepa_tune.agreement import spearman
from lejepa_tune.evaluate import gaussian_mi, view_covariances
from lejepa_tune.metrics import OBJECTIVE, OBJECTIVE_SOURCE, REFERENCE_ACC
from lejepa_tune.records import read_records
from lejepa_tune.report import format_table
from near_ties import labelfree_features, smoke, sweep_dirs  # this directory's

VARIANTS = ("reported", "debiased", "larger set", "larger set, debiased")


def wishart_log_det_bias(n: int, d: int) -> float:
    """``E[log det S] − log det Σ`` for ``S = W / n``, ``W ~ Wishart_d(n, Σ)``."""
    i = np.arange(1, d + 1)
    return float(digamma((n - i + 1) / 2).sum() + d * math.log(2 / n))


def debiased_gaussian_mi(feats: torch.Tensor, eps: float = 1e-3) -> float:
    """The Gaussian mutual information between a view and its image, in nats, from view features
    ``(M, q, D)``: ``½ [mean over views v of log det Σ_v − log det Σ_w]``, each log-determinant
    less its Wishart bias; the ridge ``eps`` (relative to ``Σ_w``'s mean eigenvalue, as in
    ``evaluate.gaussian_mi``) added to both. ``nan`` where ``M − 1`` or ``M(q − 1)`` is below ``D``."""
    f = feats.detach().double().cpu()
    m, q, d = f.shape
    if min(m - 1, m * (q - 1)) < d or not torch.isfinite(f).all():
        return math.nan
    within, _ = view_covariances(f)
    ridge = eps * float(torch.trace(within)) / d * torch.eye(d, dtype=torch.float64)
    views = f - f.mean(0)
    log_det_views = statistics.fmean(float(torch.linalg.slogdet(views[:, v].T @ views[:, v] / (m - 1) + ridge)[1]) for v in range(q))
    log_det_within = float(torch.linalg.slogdet(within + ridge)[1])
    return 0.5 * ((log_det_views - wishart_log_det_bias(m - 1, d)) - (log_det_within - wishart_log_det_bias(m * (q - 1), d)))


def replay(sweep_dir: Path, images: int) -> dict:
    records = read_records(str(sweep_dir))
    done = [t for t in records.trials if t.status == "completed" and t.checkpoint
            and math.isfinite(t.metrics.get(OBJECTIVE, math.nan)) and math.isfinite(t.metrics.get(REFERENCE_ACC, math.nan))]
    cache: dict = {}
    scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
    drift, larger = 0.0, 0
    for t in done:
        own, big = (labelfree_features(Path(t.checkpoint), cache, n)[0][OBJECTIVE_SOURCE[0]] for n in (None, images))
        drift = max(drift, abs(gaussian_mi(own) - t.metrics[OBJECTIVE]) / abs(t.metrics[OBJECTIVE]))
        larger = big.shape[0]
        for name, value in zip(VARIANTS, (t.metrics[OBJECTIVE], debiased_gaussian_mi(own), gaussian_mi(big), debiased_gaussian_mi(big))):
            scores[name].append(value)
    acc = np.array([t.metrics[REFERENCE_ACC] for t in done])
    out = {"sweep": sweep_dir.name, "trials": len(done), "larger_set": larger, "recomputed_drift": drift, "variants": {}}
    for name, values in scores.items():
        v = np.array(values)
        ok = np.isfinite(v)
        pick = int(np.flatnonzero(ok)[np.argmax(v[ok])]) if ok.any() else None
        out["variants"][name] = {
            "rho": spearman(v[ok], acc[ok]) if ok.sum() >= 3 else math.nan,
            "regret": 100 * (acc.max() - acc[pick]) if pick is not None else math.nan,
            "values": values,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="sweep directories, or directories holding them")
    parser.add_argument("--images", type=int, default=1024, help="the larger label-free set (at most the training split)")
    parser.add_argument("--json", help="also write every sweep's figures here")
    parser.add_argument("--smoke-test", action="store_true", help="two tiny trials, trained here, for CI")
    parser.add_argument("--output-dir", default=None, help="with --smoke-test: where its trials go (default: a temporary directory)")
    args = parser.parse_args(argv)
    dirs = smoke(args.output_dir) if args.smoke_test else sweep_dirs(args.dirs)
    if not dirs:
        print("no sweep directories found", file=sys.stderr)
        return 2
    results = [replay(d, args.images) for d in dirs]
    head = ["sweep", "trials", *(f"{v}: ρ / regret" for v in VARIANTS)]
    rows = [[r["sweep"], r["trials"], *(f"{r['variants'][v]['rho']:.2f} / {r['variants'][v]['regret']:.1f}" for v in VARIANTS)] for r in results]
    def mean(variant: str, key: str) -> float:
        return statistics.fmean(r["variants"][variant][key] for r in results)

    rows.append([f"mean of {len(results)}", "", *(f"{mean(v, 'rho'):.2f} / {mean(v, 'regret'):.2f}" for v in VARIANTS)])
    print(f"larger set: {', '.join(sorted({str(r['larger_set']) for r in results}))} images; "
          f"the reported objective recomputed within {max(r['recomputed_drift'] for r in results):.1e} (relative)")
    print(format_table(head, rows))
    for v in VARIANTS[1:]:
        pairs = [(r["variants"][v]["regret"], r["variants"]["reported"]["regret"]) for r in results]
        undefined = sum(not (math.isfinite(a) and math.isfinite(b)) for a, b in pairs)
        better = sum(a < b for a, b in pairs if math.isfinite(a) and math.isfinite(b))
        worse = sum(a > b for a, b in pairs if math.isfinite(a) and math.isfinite(b))
        print(f"{v}: regret lower than the reported objective's in {better} sweeps, higher in {worse}, "
              f"equal in {len(results) - better - worse - undefined}" + (f", undefined in {undefined}" if undefined else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
