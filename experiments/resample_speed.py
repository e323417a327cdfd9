"""What batching the near-tie resamples saves after a trial's last epoch, side by side in one run.

After its last epoch every trial measures its objective (the backbone's Gaussian mutual
information between views) on ``labelfree.resamples`` resamples of the label-free images, the
same resamples in every trial of a sweep (``labelfree.resampled_objective``). Timed two ways,
rounds alternating, on random view features of the label-free set's shape (256 images, 2 views):
one resample at a time (``evaluate.gaussian_mi`` per resample, as the objective's own call), and
all at once (``evaluate.gaussian_mi_resampled``: the same arithmetic batched over resamples).
The script checks that both give the same values, and reports the median seconds of each and
their ratio, for the feature widths of the digits sweeps' backbone (96) and of ViT-S (384).

    python experiments/resample_speed.py                  # widths 96 and 384, 200 resamples, 5 rounds
    python experiments/resample_speed.py --smoke-test     # width 16, 20 resamples, one round
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lejepa_tune.evaluate import gaussian_mi, gaussian_mi_resampled
from lejepa_tune.report import format_table
from machine_speed import speed_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None, help="unused: the script writes nothing")
    parser.add_argument("--widths", type=int, nargs="+", default=[96, 384])
    parser.add_argument("--images", type=int, default=256, help="label-free images (labelfree.num_images)")
    parser.add_argument("--views", type=int, default=2, help="views of each (labelfree.num_views)")
    parser.add_argument("--resamples", type=int, default=200, help="labelfree.resamples")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.smoke_test:
        args.widths, args.resamples, args.rounds = [16], 20, 1
    print(f"{args.images} images x {args.views} views, {args.resamples} resamples, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; {speed_line(1 if args.smoke_test else 3)}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for width in args.widths:
        # Image signal in every direction plus view noise: a trained encoder's features, roughly.
        feats = 2.0 * torch.randn(args.images, 1, width, generator=gen) + torch.randn(args.images, args.views, width, generator=gen)
        draws = torch.randint(0, args.images, (args.resamples, args.images), generator=gen)
        loop_s, batch_s = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            one_by_one = torch.tensor([gaussian_mi(feats[r]) for r in draws], dtype=torch.float64)
            loop_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            batched = gaussian_mi_resampled(feats, draws)
            batch_s.append(time.perf_counter() - start)
            if not torch.allclose(batched, one_by_one, rtol=1e-10, atol=0):
                raise SystemExit(f"width {width}: the batched values differ from one at a time by up to "
                                 f"{float(((batched - one_by_one).abs() / one_by_one.abs()).max()):.2e}")
        loop, batch = statistics.median(loop_s), statistics.median(batch_s)
        rows.append([width, loop, batch, f"{loop / batch:.1f}x"])
    print(format_table(["feature width", "one at a time (s)", "batched (s)", "ratio"], rows))


if __name__ == "__main__":
    main()
