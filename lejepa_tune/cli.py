"""The ``lejepa-tune`` command line.

Every user error (a bad config or search space, a missing dataset) ends in one line on stderr
naming the file and key, and exit code 2; a run that fails for another reason exits 1.
"""

from __future__ import annotations

import argparse
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
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    metrics = train(cfg)
    print(f"done: outputs in {Path(cfg.train.output_dir).resolve()}")
    return 0 if metrics is not None else 1


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
