"""Placement groups that ASHA's stops leave behind, with and without the sweep freeing them.

Runs tiny ASHA sweeps one after another in one Ray instance (2 trials of 2 epochs, the second
stopped at the rung after epoch 1), with Ray Train's controller polling its workers every
``--poll`` seconds (the sooner a report reaches ASHA, the likelier a stop lands while the
stopped trial's run is already ending by itself). After each sweep it records how long the
cluster's CPUs took to be all free again (at most 30 s), and how many placement groups the sweep freed
(``lejepa_tune.sweep.free_orphaned_train_placement_groups``: groups whose creator, a Ray Train
controller, is dead; Ray Train's own cleaner frees most of them too, a moment later, and those
it had stopped watching only the sweep does).

With ``--without-freeing`` the sweep does not look for them, as before: the series stops at the
first sweep whose CPUs are not back in 30 s, since the next sweep's trials would wait for them
forever.

    python experiments/asha_orphans.py --sweeps 10                      # the sweep frees them
    python experiments/asha_orphans.py --sweeps 10 --without-freeing    # as before
    python experiments/asha_orphans.py --smoke-test                     # one sweep, for CI
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

BASE = {
    "data": {"max_train_samples": 128, "max_val_samples": 60},
    "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}, "proj_hidden_dims": [64]},
    "train": {"epochs": 2, "batch_size": 32},
    "loss": {"num_slices": 32},
    "labelfree": {"num_images": 64},
    "eval": {"linear_max_iter": 100},
}


WAIT_S = 30  # after a sweep, for its CPUs to come back


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.freed = 0

    def emit(self, record):
        if record.getMessage().startswith("freed the placement groups of"):
            self.freed += int(record.getMessage().split()[5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--poll", type=float, default=0.2, help="Ray Train's worker poll interval, seconds (where this script starts Ray)")
    parser.add_argument("--without-freeing", action="store_true")
    parser.add_argument("--address", default=None, help="a running Ray cluster to join (default: start one)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    # Read by every Ray Train controller: set before Ray starts, or the trial driver's default wins.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.poll)

    import ray

    from lejepa_tune import sweep
    from lejepa_tune.report import format_table
    from lejepa_tune.search_space import sweep_spec_from_dict

    if args.without_freeing:
        sweep._FreeOrphanedWorkers._free = lambda self: {}
    count = _Count()
    logging.getLogger("lejepa_tune.sweep").addHandler(count)
    logging.getLogger("lejepa_tune.sweep").setLevel(logging.INFO)
    if args.address:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    else:
        sweep.init_ray(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    out = Path(args.output_dir or tempfile.mkdtemp())
    trials = 1 if args.smoke_test else 2
    rows = []
    for i in range(1 if args.smoke_test else args.sweeps):
        spec = sweep_spec_from_dict({
            "name": f"orphans{i}", "base": BASE, "search": {"optim.lr": {"type": "loguniform", "low": 1e-8, "high": 1e-2}},
            # An untrained encoder (lr 1e-8) scores higher at this scale than one trained for an
            # epoch: the second trial is the one stopped.
            "tune": {"num_samples": trials, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1,
                     "points_to_evaluate": [{"optim.lr": 1e-8}, {"optim.lr": 2e-3}][:trials]},
        })
        before, started = count.freed, time.perf_counter()
        records = sweep.run_sweep(spec, storage_path=str(out / "sweeps"), tracking_uri=f"sqlite:///{out / 'mlflow.db'}", verbose=0)
        took = time.perf_counter() - started
        ended = time.monotonic()
        while (free := ray.available_resources().get("CPU", 0)) < cpus and time.monotonic() < ended + WAIT_S:
            time.sleep(0.1)
        back = f"{time.monotonic() - ended:.1f}" if free == cpus else f"not in {WAIT_S} s ({free:g} of {cpus:g})"
        rows.append([str(i), f"{took:.1f}", " ".join(f"{t.status}@{t.epochs}" for t in records.trials), str(count.freed - before), back])
        if free < cpus:
            break
    print(f"Tiny ASHA sweeps in one Ray, Ray Train polling every {args.poll} s, "
          f"{'without' if args.without_freeing else 'with'} the sweep freeing dead runs' placement groups")
    print(format_table(["sweep", "s", "trials (status@epochs)", "groups freed", "s until all CPUs are free"], rows))
    held = sum(1 for r in rows if r[-1].startswith("not"))
    print(f"{len(rows)} sweeps; after {held} of them CPUs stayed taken" + (" (the series stops there: the next would wait forever)" if held else ""))


if __name__ == "__main__":
    main()
