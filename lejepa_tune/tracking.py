"""MLflow tracking of a sweep: one experiment per sweep name, one parent run per sweep
(``lejepa_tune.role=sweep``) and one nested child run per trial (``lejepa_tune.role=trial``).

All MLflow calls happen in the Tune driver process, through a Tune callback, so a SQLite
backend is never written by two processes of one sweep at once, and every trial is logged as
soon as Tune sees it: a finished trial's run is complete whatever a later trial does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException
from ray.tune import Callback

from .config import ConfigError, flatten_dict
from .metrics import DEVICE, DIVERGED, EPOCH
from .records import mask_uri, trial_label, unreachable

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ROLE_TAG",
    "SWEEP_DIR_TAG",
    "TRIAL_ID_TAG",
    "CHECKPOINT_TAG",
    "ERROR_TAG",
    "DEVICE_TAG",
    "CHOSEN_TAG",
    "NEAR_TIE_TAG",
    "resolve_tracking_uri",
    "open_client",
    "check_tracking_uri",
    "numeric_metrics",
    "SweepTracker",
    "MLflowTrialCallback",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_TAG = "lejepa_tune.role"
SWEEP_DIR_TAG = "lejepa_tune.sweep_dir"
TRIAL_ID_TAG = "lejepa_tune.trial_id"
CHECKPOINT_TAG = "lejepa_tune.checkpoint_uri"
ERROR_TAG = "lejepa_tune.error"
DEVICE_TAG = "lejepa_tune.device"  # what trained the trial: its reports' ``system/device``
CHOSEN_TAG = "lejepa_tune.chosen"  # "true" on the run of the trial chosen without labels
# On the run of each trial the label-free images do not separate from the choice (a near-tie):
# the share of the paired resamples on which the choice's objective is the higher ("0.77").
NEAR_TIE_TAG = "lejepa_tune.near_tie"
VIEW_KEY = "lejepa_tune"
_MAX_BATCH = 100  # MLflow's limit on params per log_batch call


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, or the default SQLite file in the working directory (absolute, so that Ray
    processes with another working directory write to the same database).

    A tracking server's user and password in the URL (``http://user:secret@host:5000``) move to
    ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``, where MLflow reads them, and
    are dropped from the URI: MLflow prints run links made of the URI, and the URI goes into
    files and runs."""
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.username is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password)
        uri = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri


def open_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` (resolved). On a SQLite file, the first client
    creates the database's tables; two sweeps started together in one directory would both try,
    and one would fail half-way through MLflow's migrations, so clients are opened one process
    at a time, under a lock file beside the database (``.mlflow.db.lock`` for ``mlflow.db``):
    it serialises processes on every machine that shares the directory, and stays with the
    database, one per database, rather than one per database ever opened in the temporary
    directory. Where that directory cannot be written to, the lock goes there instead."""
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri)
    with FileLock(_lock_path(Path(tracking_uri[len("sqlite:///") :])), timeout=300):
        return MlflowClient(tracking_uri)


def _lock_path(database: Path) -> str:
    """Where ``open_client`` locks ``database``: beside it where its directory can be written
    to, otherwise in the temporary directory, under a name made of its path."""
    if os.access(database.parent, os.W_OK | os.X_OK):
        return str(database.parent / f".{database.name}.lock")
    digest = hashlib.sha1(str(database).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"lejepa_tune_mlflow_{digest}.lock")


# The port of a tracking URI whose server or database names none.
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking_uri(uri: str, where: str, timeout: float = 5.0, experiment: tuple[str, str] | None = None) -> None:
    """Fails fast, before Ray starts, with a one-line ConfigError that begins with ``where``
    (``--tracking-uri``, or the file and key that gave the URI), where MLflow could not track:
    a scheme it has no store for, a database it cannot open, a server or database host at which
    nothing answers (MLflow itself retries for minutes before it says so), a server that accepts
    a connection but sends no answer (hung), or a server that answers one request with an error
    (not an MLflow server, say). A server is given ``timeout`` seconds to answer, or as long as
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` says where it is set (MLflow's own wait for an answer).
    ``experiment``: ``(name, where)``, an experiment the sweep will log to, which must not be a
    deleted one (MLflow keeps its name, and refuses new runs in it)."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    # A server reached through an HTTP proxy (HTTP_PROXY, HTTPS_PROXY) is MLflow's to reach.
    proxied = scheme in ("http", "https") and scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")
    if scheme in _DEFAULT_PORTS and parts.hostname and not proxied:
        answer_timeout = _answer_timeout(timeout) if scheme in ("http", "https") else None
        problem = unreachable(parts, _DEFAULT_PORTS[scheme], timeout=timeout)
        if problem is None and answer_timeout is not None:
            problem = _silent(parts, answer_timeout)
        if problem is not None:
            raise ConfigError(f"{where}: {mask_uri(uri)}: {problem}")
    quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables...": not news
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        client = open_client(uri)
        client.search_experiments(max_results=1)  # one request: is it MLflow's?
        found = client.get_experiment_by_name(experiment[0]) if experiment else None
    except UnsupportedModelRegistryStoreURIException as err:
        known = ", ".join(k for k in err.supported_uri_schemes if k)
        raise ConfigError(f"{where}: {mask_uri(uri)}: MLflow has no store for the scheme {parts.scheme!r} (it has {known})") from None
    except Exception as err:  # MLflow's own, SQLAlchemy's or the driver's: all end the command the same way
        text = str(err).strip()
        detail = text.splitlines()[0] if text else type(err).__name__
        raise ConfigError(f"{where}: {mask_uri(uri)}: MLflow cannot track there ({detail.strip()})") from None
    finally:
        quiet.setLevel(level)
    if found is not None and found.lifecycle_stage == "deleted":
        name, key = experiment
        raise ConfigError(f"{key}: the MLflow experiment {name!r} was deleted at {mask_uri(uri)}, and MLflow takes no runs in it: restore it "
                          f"(mlflow experiments restore --experiment-id {found.experiment_id}) or name another")


def _answer_timeout(default: float) -> float:
    """How long a tracking server is given to answer: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` seconds
    where it is set, else ``default``."""
    if not MLFLOW_HTTP_REQUEST_TIMEOUT.defined:
        return default
    try:
        seconds = MLFLOW_HTTP_REQUEST_TIMEOUT.get()
    except ValueError:
        seconds = None
    if seconds is None or seconds <= 0:
        raise ConfigError(f"{MLFLOW_HTTP_REQUEST_TIMEOUT.name}: a whole number of seconds above 0, got {os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name]!r}")
    return float(seconds)


def _silent(parts: urllib.parse.SplitResult, timeout: float) -> str | None:
    """Why a tracking server that accepts connections is of no use, if it sends no answer to a
    request within ``timeout`` seconds (MLflow's client waits 120 s for an answer and retries
    seven times before it says so); ``None`` when any answer comes, an error status included (the
    request through MLflow's client then tells what the server is)."""
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else host  # without credentials: MLflow's client sends those
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/api/2.0/mlflow/experiments/search", "max_results=1", ""))
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except Exception as err:  # an error status, TLS, a reset connection: an answer of sorts, for MLflow's client to judge
        if isinstance(err, TimeoutError) or (isinstance(err, urllib.error.URLError) and isinstance(err.reason, TimeoutError)):
            return f"the server accepted a connection but sent no answer in {timeout:g} s (MLFLOW_HTTP_REQUEST_TIMEOUT=SECONDS waits longer)"
    return None


def _display(value: Any) -> str:
    """A parameter as MLflow shows it: floats to 4 significant digits (``0.08026``, not
    ``0.08026123456789``); the exact searched values are in the run's ``searched.*`` tags."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(data: Mapping[str, Any]) -> list[Param]:
    return [Param(k, _display(v)[:6000]) for k, v in sorted(flatten_dict(data).items())]


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The namespaced numbers of a result (``train/loss``, ``labelfree/objective``...), without
    Tune's own bookkeeping (``training_iteration``, ``checkpoint_path``...) or strings."""
    return {k: float(v) for k, v in metrics.items() if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


class SweepTracker:
    """The MLflow side of one sweep: its experiment, its parent run, and its trials' runs.

    ``parent_run_id`` re-attaches to the parent run of an earlier start of the same sweep
    (resuming); otherwise a new parent run is created.
    """

    def __init__(self, tracking_uri: str | None, experiment: str, sweep_name: str, sweep_dir: str, parent_run_id: str | None = None):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = open_client(self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp is not None else self._create_experiment(experiment)
        self.experiment = experiment
        self.sweep_dir = str(sweep_dir)
        if parent_run_id is None:
            parent_run_id = self.client.create_run(
                self.experiment_id, run_name=sweep_name, tags={ROLE_TAG: "sweep", SWEEP_DIR_TAG: str(sweep_dir)}
            ).info.run_id
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id

    def _create_experiment(self, name: str) -> str:
        try:
            # MLflow 3 opens an experiment in its GenAI view unless it is marked as one of
            # model development, whose view is the runs table.
            return self.client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # another sweep created it a moment ago
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def share_view(self, searched: list[str], metric: str, mode: str, reference: str) -> str:
        """Saves a view of the experiment's runs table (MLflow's shared view state, an
        experiment tag): the searched values and the metric as columns, runs sorted by the
        metric, the choice's tag and the near-ties'. Returns the key that opens it
        (``viewStateShareKey``)."""
        state = {
            "selectedColumns": [*(f"params.`{k}`" for k in searched), f"metrics.`{metric}`", f"metrics.`{reference}`", f"tags.`{CHOSEN_TAG}`",
                                f"tags.`{NEAR_TIE_TAG}`"],
            "orderByKey": f"metrics.`{metric}`",
            "orderByAsc": mode == "min",
        }
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))
        return VIEW_KEY

    def ui_link(self, ui: str = "http://127.0.0.1:5000") -> str:
        """The experiment's runs table in MLflow's machine-learning view, in the shared view."""
        return f"{ui}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"

    @property
    def display_uri(self) -> str:
        return mask_uri(self.tracking_uri)

    @staticmethod
    def find_parent(tracking_uri: str | None, experiment: str, sweep_dir: str) -> str | None:
        """The parent run of the sweep in ``sweep_dir``, if an earlier start made one."""
        client = open_client(resolve_tracking_uri(tracking_uri))
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_DIR_TAG}` = '{sweep_dir}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def trial_runs(self, status: str | None = None) -> dict[str, str]:
        """``{trial_id: run_id}`` of the child runs this sweep's parent already has; with
        ``status``, only those in that state (``KILLED``: the trials the sweep's interruption
        stopped, see ``MLflowTrialCallback.on_experiment_end``)."""
        query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.`{ROLE_TAG}` = 'trial'"
        if status is not None:
            query += f" and attributes.status = '{status}'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=10_000)
        return {r.data.tags[TRIAL_ID_TAG]: r.info.run_id for r in runs if TRIAL_ID_TAG in r.data.tags}

    def log_sweep_params(self, params: Mapping[str, Any]) -> None:
        self._log_params(self.parent_run_id, params)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        batch = _params(params)
        for i in range(0, len(batch), _MAX_BATCH):
            self.client.log_batch(run_id, params=batch[i : i + _MAX_BATCH])

    def start_trial(self, trial_id: str, config: Mapping[str, Any], searched: Mapping[str, Any]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_label(searched) or trial_id,
            # mlflow.parentRunId nests the run under the sweep in the UI.
            tags={ROLE_TAG: "trial", "mlflow.parentRunId": self.parent_run_id, TRIAL_ID_TAG: trial_id},
        )
        self._log_params(run.info.run_id, config)
        self.client.log_batch(run.info.run_id, tags=[RunTag(f"searched.{k}", repr(v)) for k, v in searched.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def finish(self, status: str = "FINISHED") -> None:
        self.end_run(self.parent_run_id, status)


class MLflowTrialCallback(Callback):
    """Tune callback: a child run per trial with its flattened config as params and every
    epoch's metrics at ``step=epoch``; the checkpoint's URI as a tag when it completes.

    Each epoch is logged once: a trial resumed from a checkpoint reports again the epochs
    after it, and those already logged are skipped (by epoch, not by the latest one logged:
    the newest checkpoint on disk can be one Ray Train had not registered yet, so the run
    resumes from the one before it, whose epoch may not have been logged). Restored with its Tune experiment
    (``Tuner.restore``), the callback re-attaches to the sweep's parent run and its children.

    A driver that dies can take with it an epoch a trial had saved and reported but that had
    not reached this callback yet; the resumed trial goes on from that checkpoint and does not
    report the epoch again. So when a trial starts, the epoch of its latest checkpoint
    (``checkpointed``: trial id -> that checkpoint's metrics, or ``None``) is logged from the
    checkpoint, unless it was logged before.
    """

    def __init__(self, tracker: SweepTracker, resolve_trial: Callable[[str, Mapping[str, Any]], tuple[dict, dict]],
                 checkpointed: Callable[[str], Mapping[str, Any] | None] | None = None):
        self.tracker = tracker
        self.resolve_trial = resolve_trial  # (trial id, Tune config) -> (resolved config, searched)
        self.checkpointed = checkpointed
        self.run_ids: dict[str, str] = tracker.trial_runs()
        self.logged: dict[str, set[int]] = {t: self._logged_steps(r) for t, r in self.run_ids.items()}
        self.last_results: dict[str, dict[str, Any]] = {}
        self.started: set[str] = set()  # trials started (or resumed) by this driver
        self.device_tagged: set[str] = set()  # ... and those of them whose run has its device tag
        self.ended: set[str] = set()  # ... and those of them whose run it ended

    def __getstate__(self) -> dict[str, Any]:
        t = self.tracker
        return {"uri": t.tracking_uri, "experiment": t.experiment, "parent": t.parent_run_id, "sweep_dir": t.sweep_dir,
                "resolve_trial": self.resolve_trial, "checkpointed": self.checkpointed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        tracker = SweepTracker(state["uri"], state["experiment"], "", state["sweep_dir"], parent_run_id=state["parent"])
        self.__init__(tracker, state["resolve_trial"], state.get("checkpointed"))

    def _logged_steps(self, run_id: str) -> set[int]:
        return {int(m.value) for m in self.tracker.client.get_metric_history(run_id, EPOCH)}

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            resolved, searched = self.resolve_trial(trial.trial_id, trial.config)
            self.run_ids[trial.trial_id] = self.tracker.start_trial(trial.trial_id, resolved, searched)
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.run_ids:  # a trial of an interrupted sweep, resumed
            self.tracker.client.update_run(self.run_ids[trial.trial_id], status="RUNNING")
        run_id = self._run_id(trial)
        self.started.add(trial.trial_id)
        self.device_tagged.discard(trial.trial_id)  # started again: tagged again with its first report
        saved = self.checkpointed(trial.trial_id) if self.checkpointed is not None else None
        if saved is not None:
            self._log(run_id, trial.trial_id, saved)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_id(trial)
        self.last_results[trial.trial_id] = dict(result)
        self._log(run_id, trial.trial_id, result)
        if result.get(DEVICE) and trial.trial_id not in self.device_tagged:  # once a start: started again, it may train elsewhere
            self.tracker.set_tag(run_id, DEVICE_TAG, str(result[DEVICE]))
            self.device_tagged.add(trial.trial_id)

    def _log(self, run_id: str, trial_id: str, result: Mapping[str, Any]) -> None:
        step = int(result.get(EPOCH, result.get("training_iteration", 0)))
        if step in self.logged.setdefault(trial_id, set()):
            return  # logged before the trial (or the sweep) was resumed
        self.logged[trial_id].add(step)
        self.tracker.log_metrics(run_id, {**numeric_metrics(result), EPOCH: float(step)}, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        last = self.last_results.get(trial.trial_id, {})
        if last.get(DIVERGED):
            self.tracker.set_tag(run_id, ERROR_TAG, f"TrainingDiverged: {last[DIVERGED]}"[:500])
            self.tracker.end_run(run_id, "FAILED")
            self.ended.add(trial.trial_id)
            return
        checkpoint = last.get("checkpoint_path")
        if checkpoint:
            self.tracker.set_tag(run_id, CHECKPOINT_TAG, str(checkpoint))
        self.tracker.end_run(run_id, "FINISHED")
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        self.tracker.set_tag(run_id, ERROR_TAG, _first_error_line(getattr(trial, "error_file", None)))
        self.tracker.end_run(run_id, "FAILED")
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials, **info):
        """The runs of trials that started here but neither completed nor failed (the sweep was
        interrupted: Tune stops them without a word to its callbacks) are marked KILLED, not
        left RUNNING; a resumed sweep marks them RUNNING again."""
        for trial_id in self.started - self.ended:
            self.tracker.end_run(self.run_ids[trial_id], "KILLED")


def _first_error_line(error_file: str | None) -> str:
    """The last line of the trial's traceback (the exception itself), for the run's tags."""
    if not error_file or not os.path.isfile(error_file):
        return "the trial failed (no error file)"
    lines = [ln.strip() for ln in Path(error_file).read_text(errors="replace").splitlines() if ln.strip()]
    return (lines[-1] if lines else "the trial failed")[:500]
