"""ASHA's settings, replayed: the learning curves of a FIFO sweep (every trial trained to the
end) run again through Ray Tune's own ASHA bracket (``ray.tune.schedulers.async_hyperband``), at
several grace periods and reduction factors, with the sweep's concurrency and each trial's
measured start-up and epoch times. For each setting: the trial-epochs ASHA would have trained,
the trials it would have let finish, and the regret of its label-free pick against the best of
*all* the sweep's trials trained to the end (a stricter regret than a real ASHA run can report,
since it never sees the stopped trials' final accuracy).

The same curves are also replayed through synchronous successive halving, which ASHA
approximates without waiting: every trial trains to a rung, then only the best ``1/rf`` of them
(by the objective there) go on to the next, the last rung being the trials' full length. The
order of arrival no longer matters, and the late, better trials of a learning searcher gain
nothing; but every trial waits at each rung for the rest, so in Ray Tune it needs trials that
pause and resume from their checkpoints (``HyperBandScheduler`` with one bracket), each resume a
trial start-up. The replay counts those resumes.

The same curves are also replayed in random orders: the order in which trials arrive decides how
much asynchronous ASHA saves (a trial reaching a rung is compared only with those that reached
it before), and a searcher that learns, like TPE, proposes better trials later, which then pass
the rungs. Random orders are what random search would give with the same configurations.

It reads the FIFO sweeps ``experiments/asha.py`` wrote (their records and per-epoch objective in
the MLflow store of the same directory)::

    python experiments/asha.py --output-dir DIR            # the FIFO (and ASHA) sweeps
    python experiments/asha_replay.py --output-dir DIR [DIR ...]   # this table
    python experiments/asha_replay.py --smoke-test         # a synthetic sweep, for CI
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from lejepa_tune.agreement import spearman
from lejepa_tune.metrics import OBJECTIVE, REFERENCE_ACC
from lejepa_tune.records import read_records
from lejepa_tune.report import format_table

SETTINGS = [(1, 2), (1, 3), (1, 4), (1, 8), (2, 2), (2, 3), (2, 4), (2, 8), (3, 4), (3, 8)]  # (grace period, reduction factor)
TARGET_COMPUTE, TARGET_REGRET = 0.40, 0.01  # the target: <= 40 % of FIFO's compute, <= 1 point more regret


class _Trial:  # what _Bracket reads of a trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def curves_from_mlflow(root: Path, name: str, records) -> list[dict]:
    """Per trial, in the order Tune started them: the objective after each epoch and the seconds
    from the trial's start to each report."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`lejepa_tune.role` = 'trial'", order_by=["attributes.start_time ASC"], max_results=1000)
    reference = {t.trial_id: t.metrics.get(REFERENCE_ACC, math.nan) for t in records.trials}
    out = []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, OBJECTIVE), key=lambda m: m.step)
        times = [m.timestamp / 1000 - run.info.start_time / 1000 for m in history]
        out.append({"objective": [m.value for m in history], "at": times, "reference": reference[run.data.tags["lejepa_tune.trial_id"]]})
    return out


def replay(curves: list[dict], grace: int, rf: float, epochs: int, slots: int) -> dict:
    """Tune's loop, reduced to what ASHA decides: ``slots`` trials at a time, each report handed
    to ASHA's bracket, a stopped or finished trial's slot given to the next trial."""
    bracket = _Bracket(grace, epochs, rf, 0)
    trials = [_Trial(str(i)) for i in range(len(curves))]
    waiting, running, trained, finished = list(range(len(curves))), [], {}, []

    def start(i: int, now: float) -> None:
        heapq.heappush(running, (now + curves[i]["at"][0], i, 1, now))

    for _ in range(slots):
        if waiting:
            start(waiting.pop(0), 0.0)
    now = 0.0
    while running:
        now, i, epoch, started = heapq.heappop(running)
        trained[i] = epoch
        if epoch >= epochs:
            finished.append(i)
        elif bracket.on_result(trials[i], epoch, curves[i]["objective"][epoch - 1]) != TrialScheduler.STOP:
            heapq.heappush(running, (started + curves[i]["at"][epoch], i, epoch + 1, started))
            continue
        if waiting:
            start(waiting.pop(0), now)
    pick = max(finished, key=lambda i: curves[i]["objective"][-1])
    best = max(c["reference"] for c in curves)
    return {"trial_epochs": sum(trained.values()), "finished": len(finished), "regret": best - curves[pick]["reference"], "minutes": now / 60}


def synchronous(curves: list[dict], grace: int, rf: float, epochs: int) -> dict:
    """Synchronous successive halving: all trials train to epoch ``grace``; at each rung the best
    ``floor(n / rf)`` (at least one) by the objective there go on to the next rung, ``rf`` times
    further (the last one at ``epochs``); the pick is the best finisher. A trial that diverged
    (nan) ranks last. ``resumes``: how often a trial paused at a rung is started again.
    ``busy_s``: the seconds the trials would hold their slots, from each trial's measured times:
    its first segment as it ran, every resume as a fresh start-up (the trial's own: its first
    report's time less one epoch) and the epochs after the rung."""
    alive, trained, rung, resumes = list(range(len(curves))), {}, grace, 0
    busy = sum(c["at"][grace - 1] for c in curves)

    def startup(i: int) -> float:
        at = curves[i]["at"]
        return at[0] - (at[1] - at[0]) if len(at) > 1 else at[0]

    def score(i: int, epoch: int) -> float:
        value = curves[i]["objective"][epoch - 1]
        return value if math.isfinite(value) else -math.inf

    while True:
        trained.update(dict.fromkeys(alive, rung))
        if rung >= epochs:
            break
        alive = sorted(alive, key=lambda i: score(i, rung), reverse=True)[:max(1, int(len(alive) // rf))]
        resumes += len(alive)
        following = min(int(rung * rf), epochs)
        busy += sum(startup(i) + curves[i]["at"][following - 1] - curves[i]["at"][rung - 1] for i in alive)
        rung = following
    pick = max(alive, key=lambda i: score(i, epochs))
    best = max(c["reference"] for c in curves)
    return {"trial_epochs": sum(trained.values()), "finished": len(alive), "regret": best - curves[pick]["reference"], "resumes": resumes,
            "busy_s": busy}


def random_orders(curves: list[dict], grace: int, rf: float, epochs: int, slots: int, orders: int, fifo_regret: float) -> dict:
    """The replay over ``orders`` random arrival orders of the same trials (seeded): the median
    and 10-90 % range of the compute share, and the share of orders that meet the target against
    the FIFO sweep's ``fifo_regret``."""
    full = len(curves) * epochs
    shares, met = [], 0
    for seed in range(orders):
        order = list(curves)
        random.Random(seed).shuffle(order)
        r = replay(order, grace, rf, epochs, slots)
        shares.append(r["trial_epochs"] / full)
        met += shares[-1] <= TARGET_COMPUTE and r["regret"] <= fifo_regret + TARGET_REGRET
    q = statistics.quantiles(shares, n=10) if len(shares) > 1 else shares * 9
    return {"median": statistics.median(shares), "q10": q[0], "q90": q[-1], "met": met / orders}


def rung_ranking(curves: list[dict], epochs: int) -> list:
    """Spearman of the objective after each epoch before the last against the final objective,
    then the rank (1 = first) after epoch 1 of the trial with the best reference accuracy: what
    an ASHA rung at that epoch sees."""
    final = [c["objective"][-1] for c in curves]
    rhos = [spearman([c["objective"][e] for c in curves], final) for e in range(epochs - 1)]
    best = max(range(len(curves)), key=lambda i: curves[i]["reference"])
    first = [c["objective"][0] for c in curves]
    return [*rhos, f"{1 + sum(v > first[best] for v in first)} of {len(curves)}"]


def synthetic(n: int = 12, epochs: int = 4, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        quality, speed = rng.uniform(0, 1), rng.uniform(0.3, 1)
        objective = [quality * (1 - math.exp(-speed * (e + 1))) + rng.normal(0, 0.02) for e in range(epochs)]
        out.append({"objective": objective, "at": list(np.cumsum(rng.uniform(5, 10, epochs)) + 10), "reference": quality})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", nargs="+", default=[], help="output directories of experiments/asha.py")
    parser.add_argument("--slots", type=int, default=2, help="trials at a time, as in the sweeps")
    parser.add_argument("--orders", type=int, default=200, help="random arrival orders replayed per setting")
    parser.add_argument("--every-grace", action="store_true", help="random orders at every grace period (default: grace 1 only)")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    orders = 5 if args.smoke_test else args.orders
    sweeps = {}
    if args.smoke_test:
        sweeps["synthetic"] = (synthetic(), 4)
    else:
        for root in map(Path, args.output_dir):
            for path in sorted((root / "sweeps").glob("full_none_seed*/records.json")):
                records = read_records(str(path))
                sweeps[records.name] = (curves_from_mlflow(root, records.name, records), max(t.epochs for t in records.trials))
    rows, shuffled, early, results, sync_rows = [], [], [], {}, []
    for name, (curves, epochs) in sweeps.items():
        full = len(curves) * epochs
        early.append([name, *rung_ranking(curves, epochs)])
        fifo = max(range(len(curves)), key=lambda i: curves[i]["objective"][-1])
        fifo_regret = max(c["reference"] for c in curves) - curves[fifo]["reference"]
        rows.append([name, "FIFO", full, "100%", len(curves), 100 * fifo_regret])
        for grace, rf in SETTINGS:
            r = replay(curves, grace, rf, epochs, args.slots)
            results[f"{name} grace={grace} rf={rf}"] = r
            rows.append([name, f"ASHA grace {grace}, rf {rf}", r["trial_epochs"], f"{r['trial_epochs'] / full:.0%}", r["finished"], 100 * r["regret"]])
            if grace == 1 or args.every_grace:
                o = r["random_orders"] = random_orders(curves, grace, rf, epochs, args.slots, orders, fifo_regret)
                shuffled.append([name, f"ASHA grace {grace}, rf {rf}", f"{o['median']:.0%}", f"{o['q10']:.0%}-{o['q90']:.0%}", f"{o['met']:.0%}"])
        for grace, rf in SETTINGS:
            r = results[f"{name} synchronous grace={grace} rf={rf}"] = synchronous(curves, grace, rf, epochs)
            met = r["trial_epochs"] / full <= TARGET_COMPUTE and r["regret"] <= fifo_regret + TARGET_REGRET
            fifo_busy = sum(c["at"][-1] for c in curves)
            sync_rows.append([name, f"grace {grace}, rf {rf}", r["trial_epochs"], f"{r['trial_epochs'] / full:.0%}", r["finished"], r["resumes"],
                              f"{r['busy_s'] / fifo_busy:.0%}", 100 * r["regret"], 100 * fifo_regret, "yes" if met else "no"])
    if args.output_dir:
        (Path(args.output_dir[0]) / "replay.json").write_text(json.dumps(results, indent=2))
    print(format_table(["FIFO sweep", "replayed as", "trial-epochs", "of all", "finished", "regret vs all (points)"], rows))
    print("\nHow the objective after each epoch ranks the trials' final objective (Spearman), and where the trial with the best "
          "reference accuracy ranks after the first epoch:")
    print(format_table(["FIFO sweep", *(f"epoch {e}" for e in range(1, max(e for _, e in sweeps.values()))), "best trial's rank at epoch 1"],
                       early))
    print("\nThe same trials through synchronous successive halving (every trial waits at each rung; the order does not matter):")
    print(format_table(["FIFO sweep", "settings", "trial-epochs", "of all", "finished", "resumes", "slot time, of FIFO's", "regret vs all (points)",
                        "FIFO's regret",
                        f"within {TARGET_COMPUTE:.0%} and {100 * TARGET_REGRET:.0f} point"], sync_rows))
    print(f"\nThe same trials in {orders} random arrival orders:")
    print(format_table(["FIFO sweep", "replayed as", "compute (median)", "compute (10-90 %)",
                        f"orders within {TARGET_COMPUTE:.0%} compute and {100 * TARGET_REGRET:.0f} point of FIFO's regret"], shuffled))


if __name__ == "__main__":
    main()
