"""Real sweeps on a real local Ray: Tune trials launching Ray Train TorchTrainers, a real
Optuna study in SQLite, a real MLflow backend (SQLite file). Tiny settings: digits subsets,
one epoch, a one-block ViT."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import ray.tune
import timm
import torch
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from lejepa_tune.cli import main
from lejepa_tune.config import config_from_dict
from lejepa_tune.metrics import EPOCH, OBJECTIVE, REFERENCE_ACC, unpack_floats
from lejepa_tune.records import read_records
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.sweep import (_concurrency, _param_space, _scheduler, _searcher, dashboard_hint, free_orphaned_train_placement_groups, new_sweep_dir, orphaned_train_placement_groups,
                               ray_address, run_sweep)
from ranks import free_port
from tiny import LAM_SEARCH, SPACE, TINY_BASE, free_cpus_within, stop_tree, write_space


def test_the_tune_space_becomes_the_declared_optuna_distributions():
    spec = sweep_spec_from_dict(SPACE)
    converted = OptunaSearch.convert_search_space(_param_space(spec))
    assert converted == {k: d.to_optuna() for k, d in spec.search.items()}


def test_random_search_draws_the_same_trials_whatever_they_score_and_tpe_learns(tmp_path):
    """A real Optuna study behind Ray's OptunaSearch: with ``tune.searcher: random`` the trials
    a seed draws do not depend on their results (so a FIFO and an ASHA sweep of one seed train
    the same configurations); TPE, fed opposite results, proposes different ones."""

    def proposals(searcher: str, sign: float, n: int = 8) -> list[dict]:
        spec = sweep_spec_from_dict({**SPACE, "tune": {"num_samples": n, "seed": 3, "searcher": searcher}})
        sweep_dir = tmp_path / f"{searcher}{sign}"
        sweep_dir.mkdir()
        search = _searcher(spec, str(sweep_dir))
        search.set_search_properties(OBJECTIVE, "max", _param_space(spec))
        drawn = []
        for i in range(n):
            drawn.append(search.suggest(f"t{i}"))
            search.on_trial_complete(f"t{i}", {OBJECTIVE: sign * drawn[-1]["loss.lam"]})
        return drawn

    at_random = _searcher(sweep_spec_from_dict({**SPACE, "tune": {"searcher": "random"}}), str(tmp_path))
    assert isinstance(at_random._sampler, optuna.samplers.RandomSampler)
    assert proposals("random", 1.0) == proposals("random", -1.0)
    assert proposals("tpe", 1.0) != proposals("tpe", -1.0)


def test_optuna_is_told_each_epochs_value_once_at_that_epoch_whatever_tunes_iteration(tmp_path, recwarn):
    """A paused or restarted trial's process counts Tune's ``training_iteration`` from 1 again
    and first reports its checkpoint's epoch again: Optuna's intermediate values are keyed by
    the epoch, each told once (Ray's OptunaSearch keys them by the iteration, and would drop
    epoch 3 here as a step already told)."""
    spec = sweep_spec_from_dict({**SPACE, "tune": {"num_samples": 1}})
    search = _searcher(spec, str(tmp_path))
    search.set_search_properties(OBJECTIVE, "max", _param_space(spec))
    search.suggest("t0")
    for epoch, iteration in [(1, 1), (2, 2), (2, 1), (3, 2)]:  # paused after epoch 2, then resumed
        search.on_trial_result("t0", {EPOCH: epoch, "training_iteration": iteration, OBJECTIVE: float(epoch)})
    search.on_trial_complete("t0", {EPOCH: 3, OBJECTIVE: 3.0})
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.intermediate_values == {1: 1.0, 2: 2.0, 3: 3.0} and trial.value == 3.0
    assert not [w for w in recwarn if "already reported" in str(w.message)]


def test_a_trial_the_study_holds_as_finished_is_not_told_again_by_a_resumed_searcher(tmp_path, caplog):
    """A driver killed after Optuna was told of a trial's end, and before Tune saved its state
    (the searcher's with it), is resumed with that trial running, which reports its last
    epoch again: Optuna refuses to update a finished trial, and Ray's class would end the
    sweep with that error. The study's record stands, and nothing is told twice."""
    spec = sweep_spec_from_dict({**SPACE, "tune": {"num_samples": 1}})
    search = _searcher(spec, str(tmp_path))
    search.set_search_properties(OBJECTIVE, "max", _param_space(spec))
    search.suggest("t0")
    search.on_trial_result("t0", {EPOCH: 1, "training_iteration": 1, OBJECTIVE: 1.0})
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's last save before the kill
    search.on_trial_result("t0", {EPOCH: 2, "training_iteration": 2, OBJECTIVE: 2.0})
    search.on_trial_complete("t0", {EPOCH: 2, OBJECTIVE: 2.0})

    resumed = _searcher(spec, str(tmp_path))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert "t0" not in resumed._completed_trials  # the state the race leaves
    resumed.on_trial_result("t0", {EPOCH: 2, "training_iteration": 1, OBJECTIVE: 2.5})  # from its last checkpoint
    resumed.on_trial_complete("t0", {EPOCH: 2, OBJECTIVE: 2.5})
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state.name == "COMPLETE" and trial.value == 2.0 and trial.intermediate_values == {1: 1.0, 2: 2.0}
    assert "t0" in resumed._completed_trials
    assert not [r for r in caplog.records if "finished" in r.getMessage() or "Cannot tell" in r.getMessage()]


def test_the_scheduler_and_the_concurrency_follow_the_spec():
    spec = sweep_spec_from_dict(SPACE)
    asha = _scheduler(spec)
    # Its rungs: trials are compared after 2 epochs (the grace period), then after 2 x 3.
    assert isinstance(asha, ASHAScheduler) and [epoch for epoch, _ in asha._brackets[0]._rungs] == [6, 2]
    assert isinstance(_scheduler(sweep_spec_from_dict({"name": "s"})), FIFOScheduler)
    # 2 workers x 1 CPU per trial: 16 CPUs hold 8 trials; with 4 GPUs, 2 trials of 2 GPU workers.
    assert _concurrency(spec, {"CPU": 16}) == 8
    assert _concurrency(spec, {"CPU": 16, "GPU": 4}) == 2
    assert _concurrency(spec, {"CPU": 1}) == 1
    # Fractional GPUs: two 1-worker trials share one GPU.
    half = sweep_spec_from_dict({"name": "s", "resources": {"gpus_per_worker": 0.5}})
    assert _concurrency(half, {"CPU": 8, "GPU": 1}) == 2


def placement_group_cleaners() -> int:
    """How many of Ray Train's placement-group cleaners the session's Ray has started, alive
    or dead."""
    from ray.util.state import list_actors

    cleaners = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("class_name", "=", "PlacementGroupCleaner")],
                           limit=10_000, raise_on_missing_output=False)
    return len(cleaners)


@pytest.mark.slow
def test_the_run_command_sweeps_analyses_reports_and_tracks(local_ray, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "two_trials", LAM_SEARCH, {"num_samples": 2, "seed": 0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cleaners_before = placement_group_cleaners()
    assert main(["run", str(space), "--tracking-uri", uri, "--no-dashboard"]) == 0
    out = capsys.readouterr().out
    # Ray Train's placement-group cleaner is left out of trials no scheduler stops, on one node,
    # and their runs free their workers all the same.
    assert placement_group_cleaners() == cleaners_before
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    records = read_records(str(sweep_dir))

    # Tune: both trials completed, with the objective, also in Tune's own records.
    assert [t.status for t in records.trials] == ["completed", "completed"]
    frame = ray.tune.ExperimentAnalysis(str(sweep_dir / "tune")).dataframe()
    assert len(frame) == 2 and frame[OBJECTIVE].notna().all()
    # Tune's CSV and JSON results of each trial, and no TensorBoard files or banner: the metrics
    # are in MLflow, and the banner named a staging directory.
    trial_dirs = [d for d in (sweep_dir / "tune").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 2 and all((d / "progress.csv").is_file() and (d / "result.json").is_file() for d in trial_dirs)
    assert not list((sweep_dir / "tune").rglob("events.out.tfevents*")) and "tensorboard" not in out.lower()
    lams = sorted(t.params["loss.lam"] for t in records.trials)
    assert lams[0] != lams[1] and 0.01 <= lams[0] <= lams[1] <= 0.5
    for t in records.trials:
        assert t.metrics[REFERENCE_ACC] > 0 and t.reference_correct and t.checkpoint.startswith(str(sweep_dir / "train"))
        assert unpack_floats(t.objective_resamples).shape == (200,)  # the choice's near-ties are told from these
        assert t.device.startswith("cpu (")  # what trained it, said on the report's page
    assert f"Trained on {records.trials[0].device}." in (sweep_dir / "report" / "report.html").read_text()

    # The choice is the best objective, printed, and marked in MLflow.
    choice = max(records.trials, key=lambda t: t.metrics[OBJECTIVE])
    assert f"choice: {choice.trial_id} by objective" in out
    assert f"\nSweep 'two_trials': 2 trials (2 completed) in " in out and out.rstrip().splitlines()[-2].endswith(f"; results in {sweep_dir}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("two_trials")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "sweep"]
    children = {r.data.tags["lejepa_tune.trial_id"]: r for r in runs if r.data.tags.get("lejepa_tune.role") == "trial"}
    assert set(children) == {t.trial_id for t in records.trials} and len(runs) == 3
    assert parent.data.tags["lejepa_tune.criterion"] == "objective" and parent.data.tags["lejepa_tune.choice"] == choice.trial_id
    assert children[choice.trial_id].data.tags.get("lejepa_tune.chosen") == "true"
    assert "selection/objective/regret" in parent.data.metrics
    for tid, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.info.run_name.startswith("lam=")
        assert [m.step for m in client.get_metric_history(child.info.run_id, OBJECTIVE)] == [1]
        assert child.data.params["train.output_dir"].endswith(f"train-{tid}")
        assert child.data.tags["lejepa_tune.device"].startswith("cpu (")  # what trained it
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {a.path for a in client.list_artifacts(parent.info.run_id, "selection")}
    assert {"records.json", "selection/report.html"} <= artifacts

    # Optuna: the study in the sweep directory holds both trials with their objective.
    study = optuna.load_study(study_name="two_trials", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(t.metrics[OBJECTIVE] for t in records.trials))

    # `report` by experiment name reads everything back through MLflow; `select` exports the
    # choice, which timm loads in one line.
    assert main(["report", "two_trials", "--tracking-uri", uri, "--output-dir", str(tmp_path / "rep")]) == 0
    assert f"choice: {choice.trial_id} by objective" in capsys.readouterr().out and (tmp_path / "rep" / "report.html").is_file()
    assert main(["select", str(sweep_dir), "--export", str(tmp_path / "chosen")]) == 0
    assert json.loads((tmp_path / "chosen" / "selection.json").read_text())["trial_id"] == choice.trial_id
    model = timm.create_model(f"local-dir:{tmp_path / 'chosen'}", pretrained=True, num_classes=0)
    assert model.num_features == 48 and model(torch.randn(2, 3, 32, 32)).shape == (2, 48)


@pytest.mark.slow
def test_a_diverging_trial_fails_alone(local_ray, tmp_path, mlflow_uri):
    spec = sweep_spec_from_dict({
        "name": "diverging",
        "base": {**TINY_BASE, "optim": {"warmup_epochs": 0}},
        "search": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e30}},
        "tune": {"num_samples": 2, "points_to_evaluate": [{"optim.lr": 1e30}, {"optim.lr": 1e-3}], "max_concurrent_trials": 2},
    })
    uri = mlflow_uri
    records = run_sweep(spec, storage_path=str(tmp_path / "sweeps"), tracking_uri=uri, include_dashboard=False, verbose=0)
    by_lr = {t.params["optim.lr"]: t for t in records.trials}
    assert by_lr[1e30].status == "error" and "diverged" in by_lr[1e30].error
    assert by_lr[1e-3].status == "completed" and REFERENCE_ACC in by_lr[1e-3].metrics
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("diverging").experiment_id], "tags.`lejepa_tune.role` = 'trial'")
    status = {float(r.data.params["optim.lr"]): r.info.status for r in runs}
    assert status == {1e30: "FAILED", 1e-3: "FINISHED"}
    assert "diverged" in next(r for r in runs if r.info.status == "FAILED").data.tags["lejepa_tune.error"]
    study = optuna.load_study(study_name="diverging", storage=f"sqlite:///{records.sweep_dir}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    assert config_from_dict(spec.base_data).optim.warmup_epochs == 0


@pytest.fixture
def another_ray():
    """A second Ray instance on the machine, as another sweep would start: Ray's auto-detection
    of "the" cluster fails while it runs."""
    code = "import ray, sys, time; ray.init(address='local', num_cpus=0, include_dashboard=False, logging_level='ERROR'); print('ready', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    yield
    stop_tree(proc.pid)


@pytest.mark.slow
def test_asha_stops_a_trial_and_ray_train_frees_its_workers(local_ray, another_ray, tmp_path, mlflow_uri):
    """ASHA on the objective: the second trial, below the first at the first rung, is stopped
    there; its run holds what it did; and the CPUs its Train workers held come back. Ray Train
    frees them through the dashboard's state API, which its cleaner finds by auto-detection,
    unless told where it is: with a second Ray on the machine, it was not found, and the next
    trials would have waited forever."""
    base = {**TINY_BASE, "train": {"epochs": 2, "batch_size": 32}}
    # An untrained encoder (lr 1e-8) scores higher at this tiny scale than one trained for a
    # single epoch: the order makes the second trial the one stopped.
    spec = sweep_spec_from_dict({
        "name": "asha", "base": base, "search": {"optim.lr": {"type": "loguniform", "low": 1e-8, "high": 1e-2}},
        "tune": {"num_samples": 2, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1,
                 "points_to_evaluate": [{"optim.lr": 1e-8}, {"optim.lr": 2e-3}]},
    })
    uri = mlflow_uri
    cleaners_before = placement_group_cleaners()
    records = run_sweep(spec, storage_path=str(tmp_path / "sweeps"), tracking_uri=uri, verbose=0)
    assert placement_group_cleaners() == cleaners_before + 2  # one per trial, which ASHA may stop
    by_lr = {t.params["optim.lr"]: t for t in records.trials}
    assert (by_lr[1e-8].status, by_lr[1e-8].epochs) == ("completed", 2)
    assert (by_lr[2e-3].status, by_lr[2e-3].epochs) == ("stopped", 1)
    assert by_lr[2e-3].metrics[OBJECTIVE] < by_lr[1e-8].metrics[OBJECTIVE]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id], "tags.`lejepa_tune.role` = 'trial'")
    steps = {float(r.data.params["optim.lr"]): [m.step for m in client.get_metric_history(r.info.run_id, OBJECTIVE)] for r in runs}
    assert steps == {1e-8: [1, 2], 2e-3: [1]}
    assert free_cpus_within(local_ray, 60) == 2


@pytest.mark.slow
def test_an_interrupted_sweep_gives_its_workers_cpus_back_to_the_ray_it_leaves_running(local_ray, tmp_path, mlflow_uri):
    """A sweep run from Python (a notebook, a script that goes on using its Ray), without a
    scheduler, interrupted mid-trial: Tune stops the trial and kills its Ray Train controller,
    whose workers' placement group stayed taken (1 of 2 CPUs, still taken 30 s later, with or
    without the dashboard) until the process ended. The sweep frees it as it frees the groups
    of trials a scheduler stops. The signal is SIGUSR1, which Tune takes as it takes a Ctrl+C;
    the handler set here answers one that came too early or too late, and then the trial would
    not read "interrupted"."""
    import os
    import signal

    spec = sweep_spec_from_dict({"name": "interrupted", "base": {**TINY_BASE, "train": {"epochs": 30, "batch_size": 32}},
                                 "search": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "tune": {"num_samples": 1}})
    sweeps = tmp_path / "sweeps"

    done = threading.Event()

    def interrupt_after_the_first_report():
        deadline = time.monotonic() + 180
        while not done.is_set() and time.monotonic() < deadline and not any(p.stat().st_size for p in sweeps.rglob("result.json")):
            time.sleep(0.1)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)

    before = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    interrupter = threading.Thread(target=interrupt_after_the_first_report, daemon=True)
    try:
        interrupter.start()
        (trial,) = run_sweep(spec, storage_path=str(sweeps), tracking_uri=mlflow_uri, verbose=0).trials
    finally:  # no signal after the handler set here is gone: the default one would end pytest
        done.set()
        interrupter.join()
        signal.signal(signal.SIGUSR1, before)
    assert trial.status == "interrupted" and 1 <= trial.epochs < 30
    assert free_cpus_within(local_ray, 10) == 2


@pytest.mark.slow  # the only test outside the sweeps that needs the local Ray: its start is 5-10 s of the quick loop
def test_the_placement_group_of_a_dead_train_controller_is_found_and_freed(local_ray):
    """A controller killed with its run's placement group held (as when Tune stops a trial
    whose run is ending by itself, which a test of a real sweep meets too rarely to rely on):
    the group is found and removed, and its CPU comes back; a dead actor's of another class,
    and a live controller's, are left alone."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    def group(hex_id: str) -> PlacementGroup:
        return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id)))

    def cpus() -> float:
        return local_ray.available_resources().get("CPU", 0)

    class TrainController:  # Ray Train's controller's class name (defined here: Ray's workers cannot import tests/)
        def hold(self) -> str:
            group = ray.util.placement_group([{"CPU": 1}])
            ray.get(group.ready())
            return group.id.hex()

    class Holder(TrainController):
        pass

    TrainController.__qualname__ = "TrainController"  # as Ray names the actor's class

    dead, other = (ray.remote(num_cpus=0)(cls).remote() for cls in (TrainController, Holder))
    dead_group, other_group = ray.get([dead.hold.remote(), other.hold.remote()])
    assert cpus() == 0
    ray.kill(dead)
    ray.kill(other)
    deadline = time.monotonic() + 30
    while not orphaned_train_placement_groups() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert orphaned_train_placement_groups() == [dead_group]
    assert free_orphaned_train_placement_groups() == [dead_group]
    while cpus() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cpus() == 1 and orphaned_train_placement_groups() == []
    remove_placement_group(group(other_group))

    alive = ray.remote(num_cpus=0)(TrainController).remote()
    alive_group = ray.get(alive.hold.remote())
    assert orphaned_train_placement_groups() == []
    remove_placement_group(group(alive_group))
    ray.kill(alive)
    while cpus() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cpus() == 2


def test_a_sweep_joins_the_address_it_is_given_else_ray_address_else_starts_its_own(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None and ray_address("10.0.0.1:6379") == "10.0.0.1:6379" and ray_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # as Ray Jobs set it for their command
    assert ray_address(None) == "10.0.0.2:6379" and ray_address("10.0.0.1:6379") == "10.0.0.1:6379"


def test_asha_without_the_dashboard_is_refused_before_ray_starts(tmp_path, capsys):
    space = write_space(tmp_path, "asha_cli", LAM_SEARCH, {"num_samples": 2, "scheduler": "asha"})
    assert main(["run", str(space), "--no-dashboard"]) == 2
    # (the tiny label-free set is warned of first: 64 images for 48 features)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and str(space) in err[0] and "tune.scheduler" in err[0] and "--no-dashboard" in err[0]
    assert not (tmp_path / "sweeps").exists()


def test_the_dashboard_hint_says_how_to_pass_a_token_dialog_where_there_is_or_may_be_one():
    """Against a real HTTP server answering as Ray's dashboard does: a dashboard that asks for
    a token gets the line, one that does not gets none, one that does not answer (nothing
    listens on its port) gets it as a condition."""
    answers = {"/api/authentication_mode": b'{"authentication_mode": "token"}'}

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # only the question the hint asks is answered
            self.send_response(200 if self.path in answers else 404)
            self.end_headers()
            self.wfile.write(answers.get(self.path, b""))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        asks = dashboard_hint(url)
        answers["/api/authentication_mode"] = b'{"authentication_mode": "disabled"}'
        open_dashboard = dashboard_hint(url)
    finally:
        server.shutdown()
    silent = dashboard_hint(f"http://127.0.0.1:{free_port()}")
    assert asks.splitlines()[0] == open_dashboard.splitlines()[0] == f"Ray dashboard: {url} (trials and their Train workers: Jobs and Actors; logs: Logs)"
    assert asks.splitlines()[1] == "  it asks for a token: paste what `ray get-auth-token` prints on this machine"
    assert len(open_dashboard.splitlines()) == 1
    assert silent.splitlines()[1] == "  if it asks for a token: paste what `ray get-auth-token` prints on this machine"


def test_sweeps_of_one_name_started_in_one_second_get_a_directory_each(tmp_path, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda fmt: "20261205-000000")
    made = [new_sweep_dir(str(tmp_path / "sweeps"), "s") for _ in range(3)]
    assert [Path(p).name for p in made] == ["s_20261205-000000", "s_20261205-000000-2", "s_20261205-000000-3"]
    assert all(Path(p).is_dir() for p in made)


@pytest.mark.slow
def test_a_sweep_that_fails_before_its_trials_start_ends_its_mlflow_run_failed(local_ray, tmp_path, mlflow_uri, monkeypatch):
    """The parent run is made before the data is shared and Tune set up: a failure there (here,
    putting the decoded data in the object store) ends it FAILED, not RUNNING for good."""
    def broken(spec):
        raise OSError("the object store is full")

    monkeypatch.setattr("lejepa_tune.sweep._shared_data", broken)
    spec = sweep_spec_from_dict({"name": "setup_fails", "base": TINY_BASE, "search": {}, "tune": {"num_samples": 1}})
    with pytest.raises(OSError, match="object store is full"):
        run_sweep(spec, storage_path=str(tmp_path / "sweeps"), tracking_uri=mlflow_uri, include_dashboard=False, verbose=0)
    client = MlflowClient(mlflow_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("setup_fails").experiment_id])
    assert parent.data.tags["lejepa_tune.role"] == "sweep" and parent.info.status == "FAILED"


def test_the_orphan_freer_looks_again_after_a_failed_look_and_gives_up_only_after_several_in_a_row(monkeypatch):
    """Pure logic, Ray's tables stood in for: a failed look or removal is tried again at the
    next pass; five failed looks in a row end the looking."""
    from lejepa_tune import sweep

    answers = iter([RuntimeError("GCS busy"), {"aa": False, "bb": True}, {"aa": False}] + [RuntimeError("gone")] * 6)
    removed, refused = [], {"aa"}

    def look():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def remove(ids):
        if ids[0] in refused:
            refused.discard(ids[0])
            raise RuntimeError("being removed")
        removed.extend(ids)
        return ids

    monkeypatch.setattr(sweep, "_train_placement_groups", look)
    monkeypatch.setattr(sweep, "_remove_placement_groups", remove)
    freer = sweep._FreeOrphanedWorkers()
    assert freer._free() == {}  # the GCS was busy: nothing looked at
    assert freer._free() == {"aa": False, "bb": True} and removed == []  # aa's removal refused this time
    assert freer._free() == {"aa": False} and removed == ["aa"]  # and done at the next pass
    assert [freer._free() for _ in range(6)] == [{}] * 6
    assert freer._failed == 5 and next(answers, None) is not None  # five failed looks in a row: no sixth


def test_the_orphan_freer_waits_at_the_end_only_for_runs_of_its_own_sweep(monkeypatch):
    """Pure logic, Ray's tables stood in for: a Ray Train run that held its group before the
    sweep began (a notebook's own, another sweep's) is not waited for at the sweep's end; a run
    of the sweep's own, still ending, is, for at most ``end_wait_s``."""
    from lejepa_tune import sweep

    held = {"theirs": True}
    monkeypatch.setattr(sweep, "_train_placement_groups", lambda: dict(held))
    freer = sweep._FreeOrphanedWorkers(end_wait_s=0.6)
    freer.setup()
    started = time.monotonic()
    freer.on_experiment_end(trials=[])
    assert time.monotonic() - started < 0.3
    held["ours"] = True
    started = time.monotonic()
    freer.on_experiment_end(trials=[])
    assert time.monotonic() - started >= 0.6


def test_a_sigusr1_which_tune_takes_as_an_interruption_is_noticed_like_a_ctrl_c():
    """Tune ends a run on SIGUSR1 as on SIGINT: the sweep must know it was interrupted (and
    be resumable), and Tune's handler must still answer."""
    import os
    import signal

    from lejepa_tune import sweep

    answered = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        for signum in before:  # what Tune installs as a run starts
            signal.signal(signum, lambda signum, frame: answered.append(signum))
        sweep._INTERRUPTED.clear()
        sweep._NoticeInterrupt().setup()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        assert sweep._INTERRUPTED.is_set() and answered == [signal.SIGUSR1]
    finally:
        sweep._INTERRUPTED.clear()
        for signum, handler in before.items():
            signal.signal(signum, handler)


class TuneTrial:
    """What Tune's analysis of results and its loggers read of a trial: its results stored in
    ``stored`` (no checkpoint of Tune's own, as a sweep's trial), staged by the driver in
    ``staged``."""

    def __init__(self, stored: Path, staged: Path | None = None) -> None:
        from types import SimpleNamespace

        from pyarrow.fs import LocalFileSystem

        self.trial_id, self.last_result, self.config, self.checkpoint = stored.name, {"trial_id": stored.name}, {}, None
        self.storage = SimpleNamespace(trial_fs_path=str(stored), storage_filesystem=LocalFileSystem())
        self.local_path = str(staged) if staged else None
        if staged:
            self.init_local_path()

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(exist_ok=True)

    def __str__(self) -> str:
        return f"trial_driver_{self.trial_id}"


def test_a_resumed_sweep_keeps_quiet_about_trials_that_had_not_reported_but_not_about_unreadable_results(tmp_path, caplog):
    """Tune's restore reads every trial's results so far and warns of each it cannot read; a trial
    that had started without reporting has no result file, which is no fault. Tune's own warning,
    from its own code, for such a trial and for one whose result file is broken."""
    from types import SimpleNamespace

    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    from lejepa_tune.sweep import _without_unreported_trials

    def tune_warning(*trial_dirs: Path) -> logging.LogRecord:
        analysis = SimpleNamespace(trials=[TuneTrial(d) for d in trial_dirs])
        analysis._fetch_trial_dataframe = lambda trial: ExperimentAnalysis._fetch_trial_dataframe(analysis, trial)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ray.tune.analysis.experiment_analysis"):
            ExperimentAnalysis._fetch_trial_dataframes(analysis)
        (record,) = caplog.records
        return record

    unreported, another, broken = (tmp_path / n for n in ("a", "b", "c"))
    for d in (unreported, another, broken):
        d.mkdir()
    (broken / "result.json").write_text("{not json\n")
    assert not _without_unreported_trials(tune_warning(unreported))
    assert not _without_unreported_trials(tune_warning(unreported, another))
    assert _without_unreported_trials(tune_warning(unreported, broken))  # a broken file is still told
    assert _without_unreported_trials(logging.makeLogRecord({"msg": "Experiment has been interrupted"}))


def test_tunes_result_files_of_a_trial_started_again_by_a_resumed_sweep_keep_what_was_stored(tmp_path):
    """A resumed sweep's driver stages a trial's ``result.json`` and ``progress.csv`` in a new
    directory: the stored files are copied there first (a trial with none yet starts new ones),
    and a driver's own staged file is appended to, not replaced. Tune's real loggers, on a
    stand-in for a Tune trial (its two paths and its storage's filesystem)."""
    from lejepa_tune.sweep import _CsvLogger, _JsonLogger

    def epochs(path: Path) -> list[int]:
        return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]

    stored, staged = tmp_path / "stored", tmp_path / "staged"
    stored.mkdir()
    (stored / "result.json").write_text('{"epoch": 1}\n')
    (stored / "progress.csv").write_text("epoch\n1\n")
    trial = TuneTrial(stored, staged)
    json_logger, csv_logger = _JsonLogger(), _CsvLogger()
    json_logger.log_trial_start(trial)
    json_logger.log_trial_result(1, trial, {"epoch": 2})
    json_logger.log_trial_end(trial)
    assert epochs(staged / "result.json") == [1, 2]
    csv_logger.log_trial_result(1, trial, {"epoch": 2})
    csv_logger.log_trial_end(trial)
    assert (staged / "progress.csv").read_text().split() == ["epoch", "1", "2"]
    json_logger.log_trial_start(trial)  # the same driver again (a trial paused, then started again)
    json_logger.log_trial_result(1, trial, {"epoch": 3})
    json_logger.log_trial_end(trial)
    assert epochs(staged / "result.json") == [1, 2, 3]
    # A trial with nothing stored starts new files.
    (stored / "result.json").unlink()
    fresh = TuneTrial(stored, tmp_path / "new")
    json_logger.log_trial_start(fresh)
    json_logger.log_trial_result(1, fresh, {"epoch": 1})
    json_logger.log_trial_end(fresh)
    assert epochs(tmp_path / "new" / "result.json") == [1]
