"""A trial's pieces that need no running trial: where its run keeps its checkpoints, what a
finished run's storage says about it (a resumed sweep's trial that already finished does not
train again), the resources a trial asks for when it starts, and what its process imports."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import weakref

import pytest

from lejepa_tune.metrics import EPOCH, LOSS
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.trial import (CHECKPOINT_PATH, POLL_INTERVAL, POLL_INTERVAL_S, PREEMPTION_WATCHER, _drop_system_exit, finished_run,
                               needs_placement_group_cleaner, poll_workers_often, quiet_when_terminated, resolve_resources,
                               skip_preemption_watcher, trial_output_dir)
from tiny import write_checkpoint as checkpoint


def test_a_trials_run_lives_under_the_sweeps_train_directory():
    assert trial_output_dir("/runs/s", "ab12") == "/runs/s/train/train-ab12"
    assert trial_output_dir("s3://bucket/runs/s", "ab12") == "s3://bucket/runs/s/train/train-ab12"


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_a_run_is_finished_when_its_latest_checkpoint_is_of_the_last_epoch(tmp_path, as_uri):
    run = tmp_path / "train-t1"
    where = f"file://{run}" if as_uri else str(run)
    assert finished_run(where, 2) is None  # nothing written yet
    checkpoint(run, 0, 1)
    assert finished_run(where, 2) is None  # one epoch of two
    last = checkpoint(run, 1, 2)
    assert finished_run(where, 2) == {EPOCH: 2, LOSS: 0.5, CHECKPOINT_PATH: last}
    # A checkpoint the driver's death cut short is passed over for the one before it.
    checkpoint(run, 2, None)
    assert finished_run(where, 2)[CHECKPOINT_PATH] == last
    assert finished_run(where, 3) is None  # the run was asked for more epochs


def test_resources_are_resolved_from_the_cluster_when_the_trial_starts():
    auto = sweep_spec_from_dict({"name": "s", "resources": {"num_workers": 2, "cpus_per_worker": 2}})
    assert resolve_resources(auto, {"CPU": 16}) == (2.0, 0.0)
    # GPUs that joined the cluster after the sweep began (an autoscaler's nodes) are used.
    assert resolve_resources(auto, {"CPU": 16, "GPU": 4}) == (2.0, 1.0)
    # An explicit count, fractional or none, is kept whatever the cluster holds.
    half = sweep_spec_from_dict({"name": "s", "resources": {"gpus_per_worker": 0.5}})
    assert resolve_resources(half, {"CPU": 8, "GPU": 1}) == (1.0, 0.5)
    cpu = sweep_spec_from_dict({"name": "s", "resources": {"gpus_per_worker": 0}})
    assert resolve_resources(cpu, {"CPU": 8, "GPU": 1}) == (1.0, 0.0)


def test_the_preemption_watcher_is_left_out_on_one_node_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    skip_preemption_watcher(alive_nodes=3)
    assert PREEMPTION_WATCHER not in os.environ
    skip_preemption_watcher(alive_nodes=1)
    assert os.environ[PREEMPTION_WATCHER] == "0"
    monkeypatch.setenv(PREEMPTION_WATCHER, "1")
    skip_preemption_watcher(alive_nodes=1)
    assert os.environ[PREEMPTION_WATCHER] == "1"


def test_only_a_trial_a_scheduler_can_stop_or_a_node_loss_can_orphan_keeps_the_placement_group_cleaner():
    fifo, asha = (sweep_spec_from_dict({"name": "s", "tune": {"scheduler": name}}) for name in ("none", "asha"))
    assert not needs_placement_group_cleaner(fifo, alive_nodes=1)
    assert needs_placement_group_cleaner(fifo, alive_nodes=2)
    assert needs_placement_group_cleaner(asha, alive_nodes=1) and needs_placement_group_cleaner(asha, alive_nodes=2)


def test_the_controller_polls_its_workers_more_often_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv(POLL_INTERVAL, raising=False)
    poll_workers_often()
    assert float(os.environ[POLL_INTERVAL]) == POLL_INTERVAL_S < 2.0
    monkeypatch.setenv(POLL_INTERVAL, "5")
    poll_workers_often()
    assert os.environ[POLL_INTERVAL] == "5"


class _Referent:
    pass


def _unraisable(exc: BaseException) -> None:
    """Makes Python meet ``exc`` where it cannot raise it: in a weakref callback."""
    def callback(_ref):
        raise exc

    obj = _Referent()
    ref = weakref.ref(obj, callback)  # noqa: F841 (the callback runs only while the ref lives)
    del obj  # no cycle: freed, and the callback run, here (no collection needed)


def test_a_trials_actor_drops_only_the_system_exit_of_its_termination(monkeypatch):
    """What Ray's SIGTERM handler raises in a weakref callback of an exiting trial actor is not
    printed; any other exception Python cannot raise still is."""
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", functools.partial(_drop_system_exit, default=printed.append))
    _unraisable(SystemExit(1))
    assert printed == []
    _unraisable(ValueError("a real problem"))
    assert [type(u.exc_value) for u in printed] == [ValueError]
    # The actor's hook drops SystemExit and hands everything else to the hook set before it.
    monkeypatch.setattr(sys, "unraisablehook", printed.append)  # restored after the test
    quiet_when_terminated()
    quiet_when_terminated()  # a second call wraps nothing twice
    _unraisable(SystemExit(1))
    _unraisable(KeyError("another"))
    assert [type(u.exc_value) for u in printed] == [ValueError, KeyError]
    assert sys.unraisablehook.keywords["default"] == printed.append


def test_ray_train_passes_the_settings_a_trial_makes_on_to_its_controller():
    """Both variables are read by the run's controller, a separate process: they reach it only
    if Ray Train propagates them from the process that starts the run."""
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    assert {PREEMPTION_WATCHER, POLL_INTERVAL} <= ENV_VARS_TO_PROPAGATE


def test_the_trials_process_does_not_import_the_training_stack():
    """A trial's own process hands the worker function to Ray Train and never trains: torch,
    timm and torchvision (seconds of imports) are left to the workers, MLflow to the driver."""
    code = "import sys, lejepa_tune.trial; print(sorted(m for m in ('torch', 'timm', 'torchvision', 'sklearn', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
