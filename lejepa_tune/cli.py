"""The ``lejepa-tune`` command line.

Every user error (a bad config or search space, a missing dataset) ends in one line on stderr
naming the file and key, and exit code 2; a run that fails for another reason exits 1.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from pathlib import Path

from .config import ConfigError

__all__ = ["main", "console", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too (and exit code 2), pointing at ``--help``. Options are
    spelled out, as in Ray's and MLflow's commands: ``--out`` is not taken for ``--output-dir``,
    so that an option added later cannot change what an old command line means."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"lejepa-tune: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("space", nargs="?", help="a search-space YAML, e.g. search_spaces/lambda_sweep.yaml")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR after its driver died (its own spec.yaml; no SPACE, no --set)")
    p.add_argument("--num-samples", type=int, help="number of trials (tune.num_samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key: tune.*, resources.*, tracking.*, selection.* address the sweep, anything else the base training config (e.g. train.epochs=2)")
    p.add_argument("--address", help="Ray cluster to join ('auto' or HOST:PORT); default: $RAY_ADDRESS where set, else start a local Ray")
    p.add_argument("--storage-path", default="sweeps", help="where sweep directories are created (default: ./sweeps)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.tracking_uri, else sqlite:///mlflow.db)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (not with tune.scheduler: asha or sha: Ray Train frees a stopped trial's workers through its state API)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="trials, label-free criteria and their agreement with the probe; plots and HTML")
    p.add_argument("sweep", help="a sweep directory, or an MLflow experiment name (its latest sweep)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, to find an experiment by name (default: sqlite:///mlflow.db)")
    p.add_argument("--output-dir", help="where plots, CSV and HTML go (default: SWEEP/report)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("select", help="export the encoder chosen without labels")
    p.add_argument("sweep", help="a sweep directory, or an MLflow experiment name (its latest sweep)")
    p.add_argument("--criterion", help="a label-free criterion: objective (the default), loss, scaled_loss, backbone/gmi... (see `lejepa-tune report`)")
    p.add_argument("--export", required=True, metavar="DIR", help="where encoder.pt, projector.pt, config.yaml and selection.json are written")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, to find an experiment by name")
    p.set_defaults(func=_cmd_select)

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


def _load_checked_spec(args: argparse.Namespace):
    """The search space, checked against timm and the data too: a bad space fails here,
    before Ray starts, not once per trial."""
    from .preflight import check_sweep, searcher_note, sweep_width_note

    spec = _load_spec(args)
    check_sweep(spec)
    for note in (sweep_width_note(spec), searcher_note(spec)):
        if note:
            print(f"warning: {spec.source}: {note}", file=sys.stderr)
    return spec


def _absolute(path: str) -> str:
    """A local path made absolute (the sweep's MLflow run is tagged with the absolute one)."""
    return path if "://" in path else str(Path(path).resolve())


def _resumable_spec(sweep_dir: str):
    """The resolved space a sweep directory was started with (its ``spec.yaml``)."""
    import yaml

    from .records import join_uri, read_text
    from .search_space import sweep_spec_from_dict
    from .sweep import SPEC_FILE

    source = join_uri(sweep_dir, SPEC_FILE)
    try:
        text = read_text(source)
    except FileNotFoundError:
        raise ConfigError(f"--resume: {sweep_dir}: not a sweep directory (no {SPEC_FILE})") from None
    if "://" not in sweep_dir and not (Path(sweep_dir) / "tune").is_dir():
        raise ConfigError(f"--resume: {sweep_dir}: the sweep has no Tune experiment to resume (tune/)")
    return sweep_spec_from_dict(yaml.safe_load(text), source)


def _cmd_validate(args: argparse.Namespace) -> int:
    spec = _load_checked_spec(args)
    print(f"{args.space}: ok: sweep '{spec.name}', {spec.tune.num_samples} trials of {spec.base.train.epochs} epochs")
    for key, d in spec.search.items():
        print(f"  {key}: {d.type} {d.describe()}")
    print(f"  {_scheduler_line(spec.tune, spec.base.train.epochs)}")
    return 0


def _scheduler_line(tune, epochs: int) -> str:
    """What the search optimises and where its scheduler may stop a trial, in one line."""
    head = f"searcher: {tune.searcher} on {tune.metric} ({tune.mode})"
    if tune.scheduler == "none":
        return f"{head}; no scheduler: every trial trains all its epochs"
    rungs = tune.asha_rungs(epochs)
    settings = f"tune.grace_period {tune.grace_period}, tune.reduction_factor {tune.reduction_factor:g}"
    name = "ASHA" if tune.scheduler == "asha" else "synchronous successive halving"
    if not rungs:
        return f"{head}; {name} stops no trial: its first rung is not before the last epoch ({settings})"
    where = " or ".join(", ".join(map(str, rungs)).rsplit(", ", 1))
    if tune.scheduler == "sha":
        among, group, extra = "all trials", "all have", ""
        if tune.cohorts > 1:
            sizes = tune.cohort_sizes()
            counts = f"{sizes[0]}" if len(set(sizes)) == 1 else f"{sizes[-1]} to {sizes[0]}"
            name += f" in {tune.cohorts} cohorts of {counts} trials, one after another"
            among, group, extra = "each cohort", "the cohort has", f", tune.cohorts {tune.cohorts}"
        return (f"{head}; {name}: after epoch {where} of {epochs}, the best 1/{tune.reduction_factor:g} of {among} go on (each as soon "
                f"as it is certain to be among them) and the others stop once {group} reached it ({settings}{extra})")
    return f"{head}; ASHA may stop a trial after epoch {where} of {epochs} ({settings})"


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import analyse_and_report, publish
    from .report import format_selection, format_trials_table
    from .sweep import check_address, check_dashboard, run_sweep

    if args.resume:
        if args.space or args.overrides or args.num_samples is not None:
            raise ConfigError("--resume: a resumed sweep runs its own spec.yaml: give no SPACE, --set or --num-samples")
        spec = _resumable_spec(args.resume)
        if "***@" in (spec.tracking.tracking_uri or "") and not args.tracking_uri:
            raise ConfigError(f"--resume: {args.resume}: its tracking URI holds a password, which was not written down: pass --tracking-uri again")
    elif args.space:
        spec = _load_checked_spec(args)
    else:
        raise ConfigError("run: give a search space (SPACE) or --resume SWEEP_DIR")
    check_dashboard(spec, not args.no_dashboard, args.address)
    check_address(args.address)
    _check_destinations(args, spec)
    records = run_sweep(
        spec,
        storage_path=args.storage_path,
        address=args.address,
        tracking_uri=args.tracking_uri,
        include_dashboard=not args.no_dashboard,
        resume=_absolute(args.resume) if args.resume else None,
    )
    analysis, files = analyse_and_report(records)
    publish(analysis, records, files["html"].parent if files else None)
    print()
    if analysis is None:
        print(f"No trial completed: nothing to choose. Trials: {', '.join(f'{t.trial_id} ({t.status})' for t in records.trials)}")
    else:
        print(format_trials_table(analysis))
        print()
        print(format_selection(analysis))
        _print_choice(analysis)
    print(f"\nSweep '{spec.name}': {records.summary()} in {_minutes(records.elapsed_s)}; results in {records.sweep_dir}")
    if files:
        print(f"Report: {files['html']}")
    if records.interrupted:
        print(f"Interrupted: continue it with: lejepa-tune run --resume {records.sweep_dir}")
        return 130
    return 0 if analysis is not None and analysis.choice is not None else 1


def _check_destinations(args: argparse.Namespace, spec) -> None:
    """Where the sweep will write, checked before Ray starts: the tracking store answers and
    opens (a new SQLite file is created, as the sweep's first step would), and a local storage
    path is, or can become, a directory (not created here)."""
    from .tracking import check_tracking_uri, resolve_tracking_uri

    where = "--tracking-uri" if args.tracking_uri else f"{spec.source}: tracking.tracking_uri" if spec.tracking.tracking_uri else "tracking URI"
    named = f"{spec.source}: tracking.experiment" if spec.tracking.experiment else f"{spec.source}: name"
    check_tracking_uri(resolve_tracking_uri(args.tracking_uri or spec.tracking.tracking_uri), where,
                       experiment=(spec.tracking.experiment or spec.name, named))
    if not args.resume and "://" not in args.storage_path:
        _check_directory("--storage-path", args.storage_path)


def _check_directory(where: str, path: str) -> None:
    """``path`` is, or can become, a directory this process writes in (nothing is created
    here): checked before the work whose results would go there."""
    root = Path(path).expanduser().absolute()
    nearest = next(p for p in (root, *root.parents) if p.exists())
    if not nearest.is_dir():
        raise ConfigError(f"{where}: {path}: " + ("is a file" if nearest == root else f"{nearest} is a file") + ", not a directory")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {path}: {nearest} is not writable")


def _minutes(seconds: float) -> str:
    """``"2 min 59 s"``, rounded to the second before it is split (so never ``"2 min 60 s"``)."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s"


def _print_choice(analysis) -> None:
    from .records import trial_label

    choice = analysis.choice
    if choice is None:
        return
    trial = next(t for t in analysis.records.trials if t.trial_id == choice)
    print(f"\nLabel-free choice ({analysis.selection.default}): trial {choice} ({trial_label(trial.params)})")
    print(f"  export it: lejepa-tune select {analysis.records.sweep_dir} --export DIR")


def _cmd_report(args: argparse.Namespace) -> int:
    from .pipeline import analyse_and_report, load_records
    from .report import format_selection, format_trials_table

    if args.output_dir:
        _check_directory("--output-dir", args.output_dir)
    records = load_records(args.sweep, args.tracking_uri)
    analysis, files = analyse_and_report(records, Path(args.output_dir) if args.output_dir else None)
    if analysis is None:
        print(f"{args.sweep}: no trial completed: nothing to report", file=sys.stderr)
        return 1
    print(format_trials_table(analysis))
    print()
    print(format_selection(analysis))
    print(f"\nReport (self-contained HTML), trials.csv and criteria.csv: {files['html'].parent}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .export import export_encoder
    from .pipeline import load_records
    from .selection import CRITERIA, choose, criterion_validity, default_criterion, near_tie_note, near_ties

    _check_directory("--export", args.export)
    records = load_records(args.sweep, args.tracking_uri)
    criterion = args.criterion or default_criterion(records.spec)[0]
    if criterion not in CRITERIA:
        raise ConfigError(f"--criterion: unknown criterion {criterion!r} (known: {', '.join(CRITERIA)})")
    searched = records.searched
    validity = criterion_validity(searched)[criterion]
    if not validity.valid:
        print(f"warning: {criterion} is not valid for this sweep: {validity.reason}", file=sys.stderr)
    trial = choose(records.trials, criterion)  # label-free: no accuracy is read
    if trial is None:
        print(f"lejepa-tune: error: no completed trial has a value for {criterion}", file=sys.stderr)
        return 1
    if trial.checkpoint is None:
        print(f"lejepa-tune: error: trial {trial.trial_id} has no checkpoint", file=sys.stderr)
        return 1
    completed = [t for t in records.trials if t.status == "completed"]
    ties = near_ties(completed, trial.trial_id, criterion, searched)
    selection = {
        "sweep": records.sweep_dir, "trial_id": trial.trial_id, "criterion": criterion,
        "value": CRITERIA[criterion].value(trial), "params": dict(trial.params), "checkpoint": trial.checkpoint,
        "near_ties": ties,
    }
    export_encoder(trial.checkpoint, args.export, selection)
    if ties:
        values = {t.trial_id: CRITERIA[criterion].value(t) for t in completed}
        print(f"warning: {near_tie_note(trial.trial_id, criterion, values, ties)}", file=sys.stderr)
    print(f"Chosen by {criterion} (no labels): trial {trial.trial_id} {dict(trial.params)}")
    print(f"Exported to {args.export}: encoder.pt (timm backbone state dict), projector.pt, config.yaml, selection.json,")
    print(f"  and timm's layout: timm.create_model('local-dir:{args.export}', pretrained=True, num_classes=0)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .metrics import DEVICE
    from .preflight import check_trainable, labelfree_width_note
    from .train import resolve_device, train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    source = f"{args.config or '<defaults>'}{' (with --set)' if args.overrides else ''}"
    _check_directory("--output-dir" if args.output_dir else f"{source}: train.output_dir", cfg.train.output_dir)
    try:
        resolve_device(cfg.train.device)
    except RuntimeError as err:  # train.device: cuda on a machine without one
        raise ConfigError(f"{source}: {err}") from None
    try:
        data = check_trainable(cfg)
        note = labelfree_width_note(cfg)
        if note:
            print(f"warning: {source}: {note}", file=sys.stderr)
        final = train(cfg, data=data)
    except ValueError as err:  # a data or config mismatch (ConfigError too): batch > dataset...
        raise ConfigError(f"{source}: {err}") from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        on = f" (trained on {final[DEVICE]})" if final.get(DEVICE) else ""  # none: resumed past its last epoch, from an older checkpoint
        print(f"done: outputs in {Path(cfg.train.output_dir).resolve()}{on}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error (already printed)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"lejepa-tune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lejepa-tune: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``lejepa-tune`` command: :func:`main`, then an exit without the interpreter's teardown.

    By the time a command returns, everything it started is closed (its runs ended, its files
    written), and what an ordinary exit would still do is free the objects that Ray, torch,
    MLflow and the analysis built, one by one, nearly a million after a sweep: CPU and nothing
    else, 2.4-2.7 s after a one-trial sweep, 1.2 s after ``validate``, 0.6-0.7 s after ``report``
    (``experiments/command_exit.py``). The exit handlers (Ray's shutdown, logging's and MLflow's
    flushes) still run, and the standard streams are flushed. While a thread other than a
    daemon still runs, the exit is the ordinary one, which waits for it. An exception out of
    :func:`main` exits the ordinary way, with its traceback."""
    code = main()
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # CPython's (private) run of what an ordinary exit runs before its teardown; once
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
