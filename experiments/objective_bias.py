"""How far is the objective's estimate off on features whose truth is known? Gaussian features
with a known mutual information between a view and its image, measured by
``evaluate.gaussian_mi`` as a trial measures its label-free set (``M`` images, ``q`` views each,
``D`` features):

* pure view noise (views independent of their image; the true value is 0), at several widths ``D``
  for the set's ``M`` and ``q``: the estimate's upward bias, which grows as ``M·(q − 1)``, the
  samples of the within-image covariance, comes down towards ``D``;
* a signal in some directions (signal variance ``s`` against view noise 1, the true value
  ``½·k·log(1 + s)`` over ``k`` directions), alone and with further directions of pure view
  noise beside it: how much those noise directions add.

Beside each estimate, ``objective_variants.debiased_gaussian_mi``'s: the same quantity with the
log-determinants' Wishart bias taken out (``nan`` where ``M − 1`` or ``M·(q − 1)`` is under ``D``).

    python experiments/objective_bias.py [--images 256] [--views 2] [--seeds 3]
    python experiments/objective_bias.py --smoke-test
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch

from lejepa_tune.evaluate import gaussian_mi
from lejepa_tune.report import format_table
from objective_variants import debiased_gaussian_mi  # this directory's


def views(m: int, q: int, signal: int, snr: float, noise_only: int, collapsed: int, rng: np.random.Generator) -> torch.Tensor:
    """``(m, q, signal + noise_only + collapsed)`` features: ``signal`` directions where images
    differ with variance ``snr`` and views add unit noise, ``noise_only`` directions of unit view
    noise alone, ``collapsed`` constant directions."""
    image = rng.normal(0, math.sqrt(snr), (m, 1, signal)) + rng.normal(0, 1, (m, q, signal))
    noise = rng.normal(0, 1, (m, q, noise_only))
    return torch.from_numpy(np.concatenate([image, noise, np.zeros((m, q, collapsed))], axis=2))


def mean_scores(m: int, q: int, seeds: int, **kw) -> tuple[str, str]:
    """The objective's estimate and the debiased one, each the mean of ``seeds`` draws."""
    draws = [views(m, q, rng=np.random.default_rng(s), **kw) for s in range(seeds)]
    return f"{statistics.fmean(map(gaussian_mi, draws)):.1f}", f"{statistics.fmean(map(debiased_gaussian_mi, draws)):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="M, labelfree.num_images")
    parser.add_argument("--views", type=int, default=2, help="q, labelfree.num_views")
    parser.add_argument("--seeds", type=int, default=3, help="draws averaged per row")
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="unused; accepted like the other experiments")
    args = parser.parse_args(argv)
    m, q, seeds = args.images, args.views, (1 if args.smoke_test else args.seeds)
    widths = (32, 96) if args.smoke_test else (16, 32, 64, 96, 128, 192, 256, 384)
    print(f"M = {m} images, q = {q} views, the mean of {seeds} draws; the objective in nats")
    rows = [[d, f"{m * (q - 1) / d:.2f}", "0", *mean_scores(m, q, seeds, signal=0, snr=0.0, noise_only=d, collapsed=0)] for d in widths]
    print("pure view noise (no image information)")
    print(format_table(["D", "M·(q−1) / D", "true", "estimated", "debiased"], rows))
    k, snr, d = 32, 4.0, 96
    true = 0.5 * k * math.log1p(snr)
    cases = [(f"{k} signal directions, {d - k} collapsed", dict(signal=k, snr=snr, noise_only=0, collapsed=d - k)),
             (f"{k} signal directions, {d - k} of pure view noise", dict(signal=k, snr=snr, noise_only=d - k, collapsed=0))]
    sizes = sorted({m, 1024} if args.smoke_test else {m, 1024, 4096})
    rows = [[name, size, f"{true:.1f}", *mean_scores(size, q, seeds, **kw)] for name, kw in cases for size in sizes]
    print(f"a signal of variance {snr:g} against unit view noise, D = {d}, at several set sizes M")
    print(format_table(["features", "M", "true", "estimated", "debiased"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
