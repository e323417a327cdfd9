"""How far is the sweep's noise ceiling off? A simulation with known true accuracies.

The noise ceiling (``agreement.noise_ceiling``) is the Spearman ρ a perfect criterion would reach
against the reference: the mean ρ between the trials' reference accuracies and their values on
resamples of the reference's images. The quantity it stands for is the ρ between the measured
accuracies and the true ones (on all images the data could have held). Here trials of known
ability are scored on ``--images`` images drawn from a large population of image difficulties
(logistic: a trial gets an image right with probability ``σ(ability − difficulty)``, with half of
each draw shared by all trials, since hard images are hard for every encoder), so both are known:

* **true**: ρ between the measured accuracies and the population accuracies;
* **ceiling**: ``noise_ceiling`` of the measured right/wrong bits, as the report computes it.

Rows go from trials whose true accuracies lie within about a point of each other to trials
spread over more than ten; each is the mean over ``--reps`` draws.

    python experiments/ceiling_bias.py [--images 1797] [--reps 40]
    python experiments/ceiling_bias.py --smoke-test
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from lejepa_tune.agreement import noise_ceiling, spearman
from lejepa_tune.report import format_table


def draw(trials: int, images: int, spread: float, rng: np.random.Generator, population: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(bits (trials, images), true accuracies (trials,))`` for trials of abilities drawn with
    standard deviation ``spread`` (logit units)."""
    ability = rng.normal(2.0, spread, trials)
    true = (1 / (1 + np.exp(-(ability[:, None] - population[None, :])))).mean(1)
    difficulty = rng.choice(population, images)
    p = 1 / (1 + np.exp(-(ability[:, None] - difficulty[None, :])))
    shared = rng.random(images)  # the half of each draw that every trial shares
    bits = rng.random((trials, images)) * 0.5 + shared[None, :] * 0.5 < p
    return bits, true


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1797, help="images the reference is measured on (the bundled digits: 1797)")
    parser.add_argument("--reps", type=int, default=40, help="draws averaged per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="unused; accepted like the other experiments")
    args = parser.parse_args(argv)
    reps, n_boot = (2, 50) if args.smoke_test else (args.reps, 200)
    rng = np.random.default_rng(args.seed)
    population = rng.normal(0, 1.5, 20_000 if args.smoke_test else 200_000)
    rows = []
    for trials in ((8,) if args.smoke_test else (8, 16)):
        for spread in ((0.05, 0.4) if args.smoke_test else (0.05, 0.1, 0.2, 0.4)):
            true_rho, ceiling, width = [], [], []
            for r in range(reps):
                bits, true = draw(trials, args.images, spread, rng, population)
                true_rho.append(spearman(bits.mean(1), true))
                ceiling.append(noise_ceiling(bits, n_boot=n_boot, seed=r))
                width.append(100 * float(np.ptp(true)))
            t, c = statistics.fmean(true_rho), statistics.fmean(ceiling)
            rows.append([trials, f"{statistics.fmean(width):.1f}", f"{t:.3f}", f"{c:.3f}", f"{c - t:+.3f}"])
    print(f"{args.images} images, the mean of {reps} draws per row")
    print(format_table(["trials", "true accuracies' range (points)", "true ρ", "noise ceiling", "ceiling − true"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
