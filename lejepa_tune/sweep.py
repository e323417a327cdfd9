"""The sweep: Ray Tune trials, each launching a Ray Train V2 torch run (Ray's
``DataParallelTrainer`` with :class:`lejepa_tune.backend.TorchConfig`: what ``TorchTrainer``
runs, with torch imported by the workers alone).

Data flows one way: the Tuner (driver) asks Optuna for a point; the trial function turns it
into a validated config and starts a Ray Train run whose workers run
:func:`lejepa_tune.train.train`; every epoch the workers ``ray.train.report`` the metrics (the
same on every rank) and rank 0's checkpoint, which Ray uploads to the sweep's storage, the one
copy there is; ``TuneReportCallback`` forwards the metrics to Tune, where the searcher, the
scheduler (``schedulers.py``: ASHA or synchronous successive halving, optional) and the MLflow callback see every epoch. :func:`run_sweep` returns
the trials as :class:`~lejepa_tune.records.SweepRecords` and knows nothing of what is done
with them.

The trial function only drives its workers, so it reserves no CPU or GPU: on a 2-core machine
two 1-worker trials run at once.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import optuna
import pyarrow.fs
import ray
import ray.tune
import yaml
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .config import ConfigError, config_to_dict
from .data import DataSplits, as_tensors, build_datasets
from .metrics import DIVERGED, EPOCH, REFERENCE_ACC
from .records import SweepRecords, TrialRecord, join_uri, unreachable, write_records, write_text
from .schedulers import FinishingASHA, NoSearch, RungLimiter, SuccessiveHalving
from .search_space import SweepSpec, TuneSpec, spec_to_dict, trial_config
from .tracking import MLflowTrialCallback, SweepTracker, numeric_metrics, resolve_tracking_uri
from .trial import checkpointed_metrics, resolve_resources, trial_driver, trial_output_dir

logger = logging.getLogger(__name__)

# A sweep saved before the schedulers had a module of their own names them here, by these names,
# in its Tune experiment (which pickles the scheduler and the searcher): --resume finds them.
_NoSearch, _RungLimiter = NoSearch, RungLimiter

__all__ = ["new_sweep_dir", "run_sweep", "ray_address", "init_ray", "check_dashboard", "dashboard_hint", "FinishingASHA", "SuccessiveHalving", "SPEC_FILE", "orphaned_train_placement_groups", "free_orphaned_train_placement_groups"]

SPEC_FILE = "spec.yaml"
TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"


def _concurrency(spec: SweepSpec, cluster: Mapping[str, float]) -> int:
    """As many concurrent trials as the limiting resource holds (at least one)."""
    if spec.tune.max_concurrent_trials:
        return spec.tune.max_concurrent_trials
    cpus, gpus = resolve_resources(spec, cluster)
    limits = [cluster.get("CPU", 1) / (spec.resources.num_workers * cpus)]
    if gpus > 0:
        limits.append(cluster.get("GPU", 0) / (spec.resources.num_workers * gpus))
    return max(1, int(min(limits)))


def dashboard_hint(url: str) -> str:
    """Where the Ray dashboard is, and, when the cluster asks for a token (Ray's default for
    local clusters since 2.59), how to get past its dialog. A dashboard that does not say
    whether it asks (not reachable from here, not yet up, or a Ray without the question) gets
    the same line, as a condition. The token itself is never printed."""
    try:
        with urllib.request.urlopen(f"{url}/api/authentication_mode", timeout=5) as response:
            mode = json.load(response).get("authentication_mode")
    except (OSError, ValueError):
        mode = None
    hint = f"Ray dashboard: {url} (trials and their Train workers: Jobs and Actors; logs: Logs)"
    if mode == "token":
        hint += "\n  it asks for a token: paste what `ray get-auth-token` prints on this machine"
    elif mode is None:
        hint += "\n  if it asks for a token: paste what `ray get-auth-token` prints on this machine"
    return hint


def new_sweep_dir(storage_path: str, name: str) -> str:
    """``<storage>/<name>_<YYYYmmdd-HHMMSS>``, a directory no earlier sweep used (local paths are
    made absolute; URIs are taken as they are)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if "://" in storage_path:
        return join_uri(storage_path, f"{name}_{stamp}")
    root = Path(storage_path).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    path, suffix = root / f"{name}_{stamp}", 1
    while True:
        try:
            path.mkdir()  # made, or found made: two sweeps of one name started in one second each get their own
            return str(path)
        except FileExistsError:
            suffix += 1
            path = root / f"{name}_{stamp}-{suffix}"


class _OptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, which also writes the Tune trial id on each Optuna trial (a user
    attribute), and tells Optuna that a trial whose metric is NaN (a diverged run) failed:
    Optuna refuses a NaN value, and Ray's class would leave that trial running."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)  # the Optuna trial Ray just asked for
        if trial is not None:
            trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Optuna's intermediate value at the result's epoch, not at Tune's
        ``training_iteration``: that counts the reports of the trial's current process, so it
        starts at 1 again when a paused, restarted or resumed trial goes on, which reports its
        checkpoint's epoch a second time. Each epoch is told once."""
        if EPOCH not in result:
            super().on_trial_result(trial_id, result)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        step = int(result[EPOCH])
        if step in self._told.setdefault(trial_id, set()):
            return
        self._told[trial_id].add(step)
        if self._finished_in_study(trial_id):
            return
        with warnings.catch_warnings():  # an epoch told before a driver that died was resumed
            warnings.filterwarnings("ignore", message=r"The reported value is ignored because this `step=\d+` is already reported")
            ot_trial.report(result[self.metric], step)

    def _finished_in_study(self, trial_id: str) -> bool:
        """Whether the study holds this trial as finished although this searcher does not: a
        driver killed after Optuna was told of a trial's end, and before Tune saved its state,
        is resumed with the trial running, which then reports its last epoch again. The
        study's record stands (Optuna refuses to update a finished trial); the trial is
        counted as completed here."""
        ot_trial = self._ot_trials[trial_id]
        if not ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished():
            return False
        self._completed_trials.add(trial_id)
        return True

    @property
    def _told(self) -> dict[str, set[int]]:  # made on first use: a searcher restored from an older sweep has none
        if "_told_epochs" not in self.__dict__:
            self._told_epochs = {}
        return self._told_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials and self._finished_in_study(trial_id):
            return  # told before the driver died; Ray's class would warn that it cannot be told again
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):
            result, error = {k: v for k, v in result.items() if k != self.metric}, True
        super().on_trial_complete(trial_id, result, error)


class _OptunaLink(Callback):
    """Writes each trial's MLflow run id on its Optuna trial (a user attribute), so the study
    opened in Optuna's own tools leads back to the MLflow run and the Tune trial."""

    def __init__(self, storage_url: str, study_name: str, mlflow: MLflowTrialCallback):
        self.storage_url, self.study_name, self.mlflow = storage_url, study_name, mlflow

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.mlflow.run_ids.get(trial.trial_id)
        storage = optuna.storages.RDBStorage(self.storage_url)
        study_id = storage.get_study_id_from_name(self.study_name)
        for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get(TUNE_TRIAL_ATTR) == trial.trial_id and run_id:
                internal = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
                storage.set_trial_user_attr(internal, MLFLOW_RUN_ATTR, run_id)


def _close_orphans(sweep_dir: str, study_name: str) -> None:
    """Optuna trials still running once the sweep is over were asked for by a driver that
    died before Tune wrote them down (a resumed sweep asks again): they are marked failed,
    with the reason, so that the study holds no trial that never ends."""
    url = _optuna_storage(sweep_dir)
    if url is None or not Path(sweep_dir, "optuna.db").is_file():
        return
    storage = optuna.storages.RDBStorage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        internal = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        storage.set_trial_user_attr(internal, "lost", "asked for just before the sweep's driver died; the resumed sweep asked again")
        storage.set_trial_state_values(internal, optuna.trial.TrialState.FAIL)


def _startup_trials(tune: TuneSpec) -> int:
    """How many trials TPE draws at random before it models the ones told: half the trials,
    from 2 to 10; in cohorts (``tune.cohorts``), at most half the first cohort, so that the next
    cohort, proposed once the first has stopped all but its finishers, is TPE's."""
    startup = max(2, min(10, tune.num_samples // 2))
    if tune.scheduler == "sha" and tune.cohorts > 1:
        startup = max(1, min(startup, tune.cohort_sizes()[0] // 2))
    return startup


def _optuna_storage(sweep_dir: str) -> str | None:
    """On local storage the study lives in the sweep directory, so Optuna's own tools open it
    (``optuna-dashboard sqlite:///SWEEP_DIR/optuna.db``); elsewhere it lives in the searcher's
    state, which Tune saves with the experiment."""
    return None if "://" in sweep_dir else f"sqlite:///{Path(sweep_dir) / 'optuna.db'}"


def _searcher(spec: SweepSpec, sweep_dir: str) -> OptunaSearch | None:
    """Optuna's sampler (seeded): TPE, or random search (``tune.searcher``), on the space Tune
    hands it (:func:`_param_space`), with the metric and mode of the Tune config."""
    if not spec.search:
        return None
    if spec.tune.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.tune.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.tune.seed, n_startup_trials=_startup_trials(spec.tune))
    url = _optuna_storage(sweep_dir)
    return _OptunaSearch(
        sampler=sampler,
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(url) if url else None,
        points_to_evaluate=[dict(p) for p in spec.tune.points_to_evaluate] or None,
    )


def _param_space(spec: SweepSpec) -> dict[str, Any]:
    """The searched keys as Tune domains: Tune's progress table shows them as columns, and
    Ray's OptunaSearch turns them into the Optuna distributions of the study."""
    space = {}
    for key, d in spec.search.items():
        if d.type == "loguniform":
            space[key] = ray.tune.loguniform(d.low, d.high)
        elif d.type == "uniform":
            space[key] = ray.tune.uniform(d.low, d.high)
        elif d.type == "choice":
            space[key] = ray.tune.choice(list(d.values))
        elif (d.step or 1) == 1:
            space[key] = ray.tune.randint(int(d.low), int(d.high) + 1)  # randint excludes its upper bound
        else:
            space[key] = ray.tune.qrandint(int(d.low), int(d.high), int(d.step))
    return space


def _search_algorithm(spec: SweepSpec, sweep_dir: str, scheduler: Any) -> Searcher | None:
    """The sweep's searcher (:func:`_searcher`); under synchronous successive halving, within
    :class:`RungLimiter` (Tune's ``max_concurrent_trials`` limits the others)."""
    searcher = _searcher(spec, sweep_dir)
    if isinstance(scheduler, SuccessiveHalving):
        return RungLimiter(searcher or NoSearch(), scheduler.max_running, scheduler)
    return searcher


def _scheduler(spec: SweepSpec, cluster: Mapping[str, float] | None = None):
    """ASHA on the Tune config's metric (stopping trials every ``reduction_factor``-fold rung of
    epochs from ``grace_period`` on, never at the last epoch), synchronous successive halving
    at the same rungs, or first in, first out."""
    if spec.tune.scheduler == "sha":
        return SuccessiveHalving(spec.tune.asha_rungs(spec.base.train.epochs), spec.tune.reduction_factor, spec.tune.cohort_sizes(),
                                 _concurrency(spec, cluster if cluster is not None else {}))
    if spec.tune.scheduler == "asha":
        return FinishingASHA(
            time_attr=EPOCH,
            max_t=max(1, spec.base.train.epochs),
            grace_period=min(spec.tune.grace_period, max(1, spec.base.train.epochs)),
            reduction_factor=spec.tune.reduction_factor,
        )
    return FIFOScheduler()


def _shared_data(spec: SweepSpec) -> Any:
    """``{"ref": ...}``: the decoded dataset, once per sweep, in Ray's object store (workers on
    any node read it from there), or ``None`` when trials load their own (a sweep that searches
    ``data.*``, or data too large to hold in memory). Wrapped in a dict so that
    ``tune.with_parameters`` passes the reference on instead of the data."""
    if not spec.base.data.in_memory or any(k.startswith("data.") for k in spec.search):
        return {"ref": None}
    splits = build_datasets(spec.base.data)
    decoded = DataSplits(as_tensors(splits.train, spec.base.data.num_workers), as_tensors(splits.val, spec.base.data.num_workers), splits.num_classes, splits.name)
    return {"ref": ray.put(decoded)}


def ray_address(address: str | None) -> str | None:
    """The Ray cluster a sweep joins: ``address`` (``--address``), else Ray's own ``RAY_ADDRESS``
    (which Ray Jobs set for the command they run), else none, and the sweep starts a local Ray.

    Never a cluster found by auto-detection, as a bare ``ray.init()`` would join the last one
    ``ray start`` started on the machine: a test's or another user's cluster that happens to run
    there, which the sweep would then outlive or be killed with. ``--address auto`` asks for
    that cluster."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_dashboard(spec: SweepSpec, include_dashboard: bool, address: str | None) -> None:
    """Refuses a sweep whose scheduler stops trials on a Ray this process would start without
    its dashboard: Ray Train frees a stopped trial's workers through the dashboard's state API."""
    if spec.tune.scheduler != "none" and not include_dashboard and ray_address(address) is None:
        raise ConfigError(f"{spec.source}: tune.scheduler: {spec.tune.scheduler} stops trials early, and Ray Train frees a stopped trial's workers "
                          "through the Ray dashboard's state API: run it with the dashboard (without --no-dashboard)")


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuses, in one line and before ``ray.init``, a cluster address (``--address``, else
    ``RAY_ADDRESS``) at which nothing answers: ``ray.init`` would wait on it for minutes, then
    end in a traceback. ``auto`` and ``local`` are left to Ray."""
    given = ray_address(address)
    if given is None or given in ("auto", "local"):
        return
    where = "--address" if address else "RAY_ADDRESS"
    client = given.startswith("ray://")  # Ray Client, port 10001 by default; else the GCS, 6379
    parts = urllib.parse.urlsplit(given if "://" in given else f"//{given}")
    if not parts.hostname:
        raise ConfigError(f"{where}: {given}: expected HOST:PORT, ray://HOST:PORT or auto")
    problem = unreachable(parts, 10001 if client else 6379, "no Ray cluster", timeout)
    if problem is not None:
        raise ConfigError(f"{where}: {given}: {problem}")


def init_ray(address: str | None = None, include_dashboard: bool = True, **kwargs: Any):
    """``ray.init`` as a sweep needs it: the dashboard on loopback, and, on a Ray this process
    starts, every worker told where that dashboard is (``RAY_API_SERVER_ADDRESS``). Ray Train's
    placement-group cleaner finds the state API by auto-detection, which fails as soon as a
    second Ray runs on the machine (another sweep, a test's cluster); then no stopped trial's
    workers would ever be freed. Which cluster: :func:`ray_address`."""
    where, address = "--address" if address else "RAY_ADDRESS", ray_address(address)
    if address is None and include_dashboard:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        kwargs.update(dashboard_port=port, runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    try:
        return ray.init(address=address or "local", include_dashboard=include_dashboard, dashboard_host="127.0.0.1", **kwargs)
    except ConnectionError as err:
        if address is None:
            raise
        raise ConfigError(f"{where}: {address}: {_join_refused(err)}") from err


def _join_refused(err: ConnectionError) -> str:
    """Why ``ray.init`` could not join a cluster that answers (:func:`check_address` has refused
    one that does not), in a line: a token the cluster does not take is said with what to set."""
    text = f"{err} {err.__cause__ or ''}"  # Ray's cause holds the last attempt's traceback, as text
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return ("the Ray cluster did not take this process's token (none, or not its own): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                "to what `ray get-auth-token` prints on its head node")
    return f"Ray could not join the cluster ({' '.join(str(err).split())})"


def _state_api_available(wait_s: float = 30.0) -> bool:
    """Whether the cluster serves Ray's state API (part of its dashboard), which Ray Train's
    placement-group cleaner asks whether a stopped trial's controller is gone, before it frees
    that trial's workers. Without it, every trial a scheduler stops keeps its CPUs and GPUs."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + wait_s
    while True:
        try:
            list_nodes(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10, raise_on_missing_output=False)
            return True
        except Exception:  # the dashboard is still starting, or there is none
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)


def run_sweep(
    spec: SweepSpec,
    *,
    storage_path: str = "sweeps",
    address: str | None = None,
    tracking_uri: str | None = None,
    include_dashboard: bool = True,
    verbose: int = 1,
    resume: str | None = None,
) -> SweepRecords:
    """Runs the whole sweep and returns its trials. Starts (or joins, with ``address``) Ray.

    ``resume``: the directory of a sweep whose driver died. Its Tune experiment is restored
    (``Tuner.restore``): finished trials are kept, unfinished ones continue from their last
    checkpoints, the Optuna study goes on from its saved state, and the MLflow parent run and
    its children are found again by their tags.
    """
    start = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.tracking_uri)
    experiment = spec.tracking.experiment or spec.name
    if not ray.is_initialized():
        check_dashboard(spec, include_dashboard, address)
        context = init_ray(address, include_dashboard, logging_level="WARNING", log_to_driver=verbose > 0)
        if getattr(context, "dashboard_url", None):
            print(dashboard_hint(f"http://{context.dashboard_url}"), flush=True)

    if spec.tune.scheduler != "none" and not _state_api_available():
        raise ConfigError(f"{spec.source}: tune.scheduler: {spec.tune.scheduler} stops trials early, and Ray Train frees a stopped trial's workers "
                          "through the Ray dashboard's state API, which this Ray cluster does not serve: start its head with --include-dashboard=true")
    if resume is None:
        sweep_dir, parent = new_sweep_dir(storage_path, spec.name), None
        write_text(join_uri(sweep_dir, SPEC_FILE), yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    else:
        sweep_dir, parent = resume, SweepTracker.find_parent(uri, experiment, resume)

    tracker = SweepTracker(uri, experiment, Path(sweep_dir).name, sweep_dir, parent_run_id=parent)
    # From here on the parent run exists: whatever fails before the sweep runs ends it FAILED,
    # not RUNNING for good.
    try:
        if parent is None:
            tracker.log_sweep_params({k: v for k, v in spec_to_dict(spec).items() if k != "base"})
        tracker.share_view(list(spec.search), spec.tune.metric, spec.tune.mode, REFERENCE_ACC)
        print(f"MLflow: experiment '{experiment}', parent run {tracker.parent_run_id}", flush=True)
        if tracker.tracking_uri.startswith(("http://", "https://")):
            print(f"  runs: {tracker.ui_link(tracker.tracking_uri.rstrip('/'))}", flush=True)
        else:
            # One worker: several restart each other on health-check timeouts while a sweep runs.
            print(f"  view it with: mlflow ui --backend-store-uri {tracker.display_uri} --host 127.0.0.1 --port 5000 --workers 1", flush=True)
            print(f"  then open: {tracker.ui_link()}", flush=True)
        print(f"Sweep directory: {sweep_dir}", flush=True)

        # Tune writes its experiment state (trials, searcher) every second, so that a driver that
        # dies loses at most that: the default adapts to minutes on long sweeps.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        # Tune's CSV and JSON results of every trial are kept (``_new_tuner`` asks for them), but
        # not its TensorBoard logger, which Tune adds unless told not to: its banner points at a
        # staging directory, and the sweep's metrics are in MLflow.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        trainable = ray.tune.with_resources(
            # The trial function only drives its Ray Train run's workers, so it reserves no CPU or
            # GPU; Ray needs a non-empty request, hence a token of logical memory.
            ray.tune.with_parameters(trial_driver, spec=spec, sweep_dir=sweep_dir, data=_shared_data(spec)),
            {"CPU": 0, "memory": 2**20},
        )
        if resume is not None:
            # The callbacks come back with the experiment; the MLflow one re-attaches itself.
            analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
            analysis_log.addFilter(_without_unreported_trials)
            try:
                tuner = ray.tune.Tuner.restore(join_uri(sweep_dir, "tune"), trainable, resume_unfinished=True, resume_errored=False)
            finally:
                analysis_log.removeFilter(_without_unreported_trials)
        else:
            tuner = _new_tuner(spec, sweep_dir, trainable, tracker, verbose)
    except BaseException:
        tracker.finish("FAILED")
        raise
    status = "FAILED"
    main_thread = threading.current_thread() is threading.main_thread()
    before = {signum: signal.getsignal(signum) for signum in _TUNE_SIGNALS} if main_thread else {}
    _INTERRUPTED.clear()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(_without_tune_restore_hint)
    try:
        grid = tuner.fit()
        interrupted = _INTERRUPTED.is_set()
        if not interrupted:  # an interrupted sweep's running Optuna trials are its stopped trials, which a resume continues
            _close_orphans(sweep_dir, spec.name)
        run_ids = tracker.trial_runs()
        killed = set(tracker.trial_runs("KILLED")) if interrupted else set()
        trials = tuple(_record(r, spec, sweep_dir, run_ids, killed) for r in grid)
        status = "KILLED" if interrupted else "FINISHED"
    finally:
        tune_log.removeFilter(_without_tune_restore_hint)
        tracker.finish(status)
        for signum, handler in before.items():  # Tune leaves its handlers installed after a run that was not interrupted
            signal.signal(signum, handler)
    records = SweepRecords(
        name=spec.name, spec=spec_to_dict(spec), trials=trials, sweep_dir=sweep_dir, tracking_uri=uri,
        experiment=experiment, parent_run_id=tracker.parent_run_id, elapsed_s=time.perf_counter() - start,
        interrupted=interrupted,
    )
    write_records(records)
    return records


_INTERRUPTED = threading.Event()
# The signals on which Tune ends a run gracefully (SIGUSR1 where the platform has it).
_TUNE_SIGNALS = (signal.SIGINT, *((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()))


def _without_tune_restore_hint(record: logging.LogRecord) -> bool:
    """Leaves out Tune's "Experiment has been interrupted ... Resume experiment with:
    Tuner.restore(...)": a sweep restored that way would run without its MLflow runs, its Optuna
    study and its report. The command says what continues it (``lejepa-tune run --resume``)."""
    return not record.getMessage().startswith("Experiment has been interrupted")


def _without_unreported_trials(record: logging.LogRecord) -> bool:
    """Leaves out Tune's "Failed to fetch metrics for N trial(s)" as it restores a sweep, where
    every trial it lists had no result file yet: a trial that had started but not reported when
    the sweep stopped, which starts again like a new one. Tune reads those results so far for
    ``Tuner.get_results`` before a run; the sweep's results come from the run that follows
    (``Tuner.fit``). A failure of any other kind is kept."""
    lines = record.getMessage().splitlines()
    if not lines or not lines[0].startswith("Failed to fetch metrics for"):
        return True
    return not all(line.startswith("- ") and "FileNotFoundError(" in line and "were not found at" in line for line in lines[1:])


class _ResultsKept:
    """Tune's JSON and CSV loggers write a trial's results (``result.json``, ``progress.csv``) in
    a staging directory of the driver's Ray session, and copy them to the sweep's storage. A
    resumed sweep's driver that started a Ray of its own has a new session: a trial started
    again there begins a new file, which then replaces the one in storage, and the results
    reported before the interruption are lost from it. Tune copies the stored file back first only for a trial with a checkpoint
    of Tune's own, which these trials never report (theirs is Ray Train's, which resumes them).
    Here it is copied back whenever the staging directory has none yet."""

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        local = Path(trial.local_path, file_name)
        if local.exists():  # this driver's own file, which it appends to
            return
        try:
            pyarrow.fs.copy_files(Path(trial.storage.trial_fs_path, file_name).as_posix(), local.as_posix(),
                                  source_filesystem=trial.storage.storage_filesystem)
        except FileNotFoundError:  # a trial that had not reported
            pass


class _JsonLogger(_ResultsKept, JsonLoggerCallback):
    pass


class _CsvLogger(_ResultsKept, CSVLoggerCallback):
    pass


class _NoticeInterrupt(Callback):
    """Notes a Ctrl+C, or a SIGUSR1 (which Tune takes the same way). Tune ends a run gracefully
    on the first one (its state saved, its trials stopped, ``fit`` returning as usual) and says
    so only in its log; this callback, set up after Tune installed its handlers, chains itself
    in front of them, so that the sweep knows it was interrupted (``lejepa-tune run --resume``
    continues it). Tune's handler still answers, and a second Ctrl+C gets the handler from
    before Tune's."""

    def setup(self, **info):
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _TUNE_SIGNALS:
            tune_handler = signal.getsignal(signum)
            if callable(tune_handler):
                signal.signal(signum, functools.partial(_noticed, tune_handler))


def _noticed(tune_handler: Callable[[int, Any], Any], signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    tune_handler(signum, frame)


def _train_placement_groups() -> dict[str, bool]:
    """The placement groups (hex ids) this job's Ray Train controllers hold, each with whether
    its controller is alive."""
    from ray._private.state import actors, state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    job = ray.get_runtime_context().get_job_id()
    held = {}
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = PlacementGroupTableData.FromString(raw)
        creator = group.creator_actor_id.hex()
        if group.state != PlacementGroupTableData.CREATED or group.is_detached or group.creator_job_id.hex() != job or not creator.strip("f"):
            continue  # removed, detached, another job's, or created by a driver, not an actor
        actor = actors(actor_id=creator)
        if actor and actor["ActorClassName"] == "TrainController":
            held[group.placement_group_id.hex()] = actor["State"] != "DEAD"
    return held


def orphaned_train_placement_groups() -> list[str]:
    """The placement groups (hex ids) of this job's Ray Train runs whose controller is dead.

    A run's controller frees its workers' placement group when the run ends, and Ray Train's
    placement-group cleaner frees it when the controller dies first; but the controller stops
    the cleaner before it frees the group. When ASHA stops a trial whose run is ending by itself
    (its last epochs take less time than the stop takes to land), Tune removes the trial's own
    placement group, and the controller in it, in between: the run's placement group, and its
    CPUs, stay taken until the sweep's driver exits, and later trials wait for them. Ray keeps
    a non-detached placement group for as long as the job that created it lives, so such a
    group is found by its creator: a ``TrainController`` actor that is dead."""
    return [hex_id for hex_id, alive in _train_placement_groups().items() if not alive]


def free_orphaned_train_placement_groups() -> list[str]:
    """Removes the placement groups ``orphaned_train_placement_groups`` finds; returns them."""
    return _remove_placement_groups(orphaned_train_placement_groups())


def _remove_placement_groups(hex_ids: list[str]) -> list[str]:
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for hex_id in hex_ids:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id))))
    return hex_ids


class _FreeOrphanedWorkers(Callback):
    """Frees the workers of trial runs whose controller died with the run's placement group
    still held (``orphaned_train_placement_groups``): every ``every_s`` seconds of the sweep's
    loop, and at its end, once the controllers of its last trials are gone (at most
    ``end_wait_s``). A scheduler that stops trials leaves such runs behind, and so does an
    interrupted sweep (Ctrl+C stops its running trials), which matters where the process goes on
    using its Ray (a notebook, a script): a Ray the process started ends with it. A look that
    fails (a busy GCS, a group being removed at that moment) is tried again at the next pass;
    after ``give_up_after`` failed looks in a row (Ray's tables are internal, and may change) it
    stops looking, and says so once. At the end it waits only on runs whose group it did not
    see before the sweep began: another Ray Train run of the same process (a notebook's, an
    earlier sweep's) is not its own to wait for."""

    def __init__(self, every_s: float = 2.0, end_wait_s: float = 10.0, give_up_after: int = 5):
        self.every_s = every_s
        self.end_wait_s = end_wait_s
        self.give_up_after = give_up_after
        self._next = 0.0
        self._failed = 0
        self._before: set[str] = set()

    def setup(self, **info):
        try:
            self._before = set(_train_placement_groups())
        except Exception:  # looked at again, and said so, at the sweep's passes
            self._before = set()

    def _free(self) -> dict[str, bool]:
        """Frees the groups of dead controllers; returns every group looked at, with whether its
        controller is alive (none where looking failed)."""
        if self._failed >= self.give_up_after:
            return {}
        try:
            held = _train_placement_groups()
        except Exception as err:  # Ray's GCS tables are internal: a change in them must not end the sweep
            self._failed += 1
            if self._failed == self.give_up_after:
                logger.warning("could not look for the placement groups of dead trial runs (%d times in a row): %s", self._failed, err)
            return {}
        self._failed = 0
        freed = []
        for hex_id in [hex_id for hex_id, alive in held.items() if not alive]:
            try:
                freed += _remove_placement_groups([hex_id])
            except Exception as err:  # removed by another at the same moment, say: looked at again next pass
                logger.info("could not free placement group %s yet: %s", hex_id, err)
        if freed:
            logger.info("freed the placement groups of %d trial run(s) whose controller had died: %s", len(freed), ", ".join(freed))
        return held

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            self._free()

    def on_experiment_end(self, trials, **info):
        deadline = time.monotonic() + self.end_wait_s
        # A controller of this sweep's is yet to die.
        while any(alive for hex_id, alive in self._free().items() if hex_id not in self._before) and time.monotonic() < deadline:
            time.sleep(0.2)


def _new_tuner(spec: SweepSpec, sweep_dir: str, trainable: Any, tracker: SweepTracker, verbose: int) -> ray.tune.Tuner:
    def resolve_trial(trial_id: str, tune_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        params = {k: tune_config[k] for k in spec.search if k in tune_config}
        return config_to_dict(trial_config(spec, params, trial_output_dir(sweep_dir, trial_id))), params

    def checkpointed(trial_id: str) -> dict[str, Any] | None:
        return checkpointed_metrics(trial_output_dir(sweep_dir, trial_id))

    mlflow = MLflowTrialCallback(tracker, resolve_trial, checkpointed)
    optuna_url = _optuna_storage(sweep_dir)
    callbacks = [mlflow, *([_OptunaLink(optuna_url, spec.name, mlflow)] if optuna_url and spec.search else []), _NoticeInterrupt(),
                 _CsvLogger(), _JsonLogger(), _FreeOrphanedWorkers()]
    cluster = ray.cluster_resources()
    scheduler = _scheduler(spec, cluster)
    return ray.tune.Tuner(
        trainable,
        param_space=_param_space(spec),
        tune_config=ray.tune.TuneConfig(
            metric=spec.tune.metric,
            mode=spec.tune.mode,
            search_alg=_search_algorithm(spec, sweep_dir, scheduler),
            scheduler=scheduler,
            num_samples=spec.tune.num_samples,
            # Synchronous successive halving limits the running trials itself (paused ones count
            # as running for Tune's limit): its RungLimiter.
            max_concurrent_trials=None if isinstance(scheduler, SuccessiveHalving) else _concurrency(spec, cluster),
        ),
        run_config=ray.tune.RunConfig(
            name="tune",
            storage_path=sweep_dir,
            callbacks=callbacks,
            verbose=verbose,
            failure_config=ray.tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


def _record(result, spec: SweepSpec, sweep_dir: str, run_ids: Mapping[str, str], interrupted: Collection[str] = ()) -> TrialRecord:
    """The record of one trial of Tune's results; ``interrupted``: the ids of the trials that
    the sweep's interruption stopped (Tune ends them as it ends those a scheduler stopped)."""
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    params = {k: result.config.get(k) for k in spec.search} if result.config else {}
    epochs = int(metrics.get(EPOCH, 0) or 0)
    if result.error is not None:
        text = str(result.error).strip()  # the last line of a traceback is the exception
        status, error = "error", (text.splitlines()[-1][:500] if text else type(result.error).__name__)
    elif metrics.get(DIVERGED):
        status, error = "error", f"TrainingDiverged: {metrics[DIVERGED]}"
    else:
        target = int(params.get("train.epochs", spec.base.train.epochs))  # epochs may be searched
        status, error = ("completed" if epochs >= target else "interrupted" if trial_id in interrupted else "stopped"), None
    details = {k: v for k, v in metrics.items() if isinstance(v, str) and "/" in k and k != DIVERGED}
    checkpoint = metrics.get("checkpoint_path")
    return TrialRecord(
        trial_id=trial_id, status=status, params=params, metrics=numeric_metrics(metrics), details=details,
        checkpoint=_checkpoint_uri(sweep_dir, checkpoint) if checkpoint else None, error=error, epochs=epochs,
        run_id=run_ids.get(trial_id),
    )


def _checkpoint_uri(sweep_dir: str, path: str) -> str:
    """Ray reports a checkpoint's path within its storage filesystem (``bucket/key`` for
    ``s3://``); as a URI it carries the sweep storage's scheme again."""
    if "://" in sweep_dir and "://" not in path:
        return f"{sweep_dir.split('://', 1)[0]}://{path}"  # s3: bucket/key; file: /abs/path
    return path
