"""The ``lejepa-tune`` command line.

Every user error (a bad config or search space, a missing dataset) ends in one line on stderr
naming the file and key, and exit code 2; a run that fails for another reason exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lejepa-tune",
        description="Label-free hyperparameter search for LeJEPA pretraining (Ray Tune + Optuna + MLflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="one LeJEPA training run (one process, or DDP under torchrun)")
    p.add_argument("config", nargs="?", help="a training config YAML (default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--output-dir", help="where the run writes config.yaml, metrics.jsonl and its checkpoint (train.output_dir)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("run", help="run a sweep: Ray Tune trials of Ray Train LeJEPA runs, Optuna search, MLflow tracking")
    p.add_argument("space", help="a search-space YAML, e.g. search_spaces/lambda_sweep.yaml")
    p.add_argument("--num-samples", type=int, help="number of trials (tune.num_samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key: tune.*, resources.*, tracking.*, selection.* address the sweep, anything else the base training config (e.g. train.epochs=2)")
    p.add_argument("--address", help="Ray cluster to join ('auto' or HOST:PORT); default: start a local Ray")
    p.add_argument("--storage-path", default="sweeps", help="where sweep directories are created (default: ./sweeps)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.tracking_uri, else sqlite:///mlflow.db)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check a search-space YAML (and every trial config it can produce) without starting Ray")
    p.add_argument("space")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_validate)
    return parser


def _load_spec(args: argparse.Namespace):
    from .search_space import load_sweep_spec

    overrides = list(args.overrides)
    if getattr(args, "num_samples", None) is not None:
        overrides.append(f"tune.num_samples={args.num_samples}")
    return load_sweep_spec(args.space, overrides)


def _cmd_validate(args: argparse.Namespace) -> int:
    spec = _load_spec(args)
    print(f"{args.space}: ok: sweep '{spec.name}', {spec.tune.num_samples} trials of {spec.base.train.epochs} epochs")
    for key, d in spec.search.items():
        shown = f"{list(d.values)}" if d.type == "choice" else f"[{d.low}, {d.high}]" + (f" step {d.step}" if d.step and d.step > 1 else "")
        print(f"  {key}: {d.type} {shown}")
    return 0


def _check_dataset(spec) -> None:
    """A missing dataset fails here, before Ray starts, not once per trial."""
    from .data import DatasetError, build_datasets

    try:
        build_datasets(spec.base.data)
    except DatasetError as err:
        raise ConfigError(f"{spec.source}: base.{err}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .report import format_trials_table
    from .sweep import run_sweep

    spec = _load_spec(args)
    _check_dataset(spec)
    result = run_sweep(
        spec,
        storage_path=args.storage_path,
        address=args.address,
        tracking_uri=args.tracking_uri,
        include_dashboard=not args.no_dashboard,
    )
    print()
    print(format_trials_table(result.trials, list(spec.search), spec.tune.metric))
    minutes, seconds = divmod(result.elapsed_s, 60)
    print(f"\nSweep '{spec.name}': {len(result.trials)} trials in {int(minutes)} min {seconds:.0f} s; results in {result.sweep_dir}")
    return 0 if any(t.status == "completed" for t in result.trials) else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"done: outputs in {Path(cfg.train.output_dir).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"lejepa-tune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lejepa-tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
