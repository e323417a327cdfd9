"""Tune's schedulers for a sweep (``lejepa_tune.schedulers``): ASHA that lets a trial at its last
epoch end by itself, and synchronous successive halving, its decisions at every rung, its cohorts,
its limit on concurrent trials and a resumed sweep's trials, on stand-ins for Tune's trials and
controller; then in a real Tune run on a real local Ray."""

from __future__ import annotations

import pickle
import time

import optuna
import pytest
import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import SearchGenerator

from lejepa_tune import schedulers, sweep
from lejepa_tune.metrics import EPOCH, OBJECTIVE
from lejepa_tune.schedulers import SuccessiveHalving
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.sweep import _param_space, _scheduler, _search_algorithm, _startup_trials
from tiny import SPACE


def test_a_sweep_saved_when_the_schedulers_lived_in_the_sweep_module_still_loads():
    """A sweep's Tune experiment pickles its scheduler and searcher by module and name; those of a
    sweep saved before the schedulers had a module of their own name ``lejepa_tune.sweep``, and
    ``--resume`` must still find them there."""
    for then, now in (("FinishingASHA", "FinishingASHA"), ("SuccessiveHalving", "SuccessiveHalving"), ("_RungLimiter", "RungLimiter"), ("_NoSearch", "NoSearch")):
        assert pickle.loads(f"clejepa_tune.sweep\n{then}\n.".encode()) is getattr(schedulers, now)
    assert sweep.SuccessiveHalving.__module__ == "lejepa_tune.schedulers"


class Trial:  # what the schedulers read of a Tune trial, and set
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def set_status(self, status: str) -> None:
        self.status = status


def test_asha_stops_trials_at_its_rungs_but_never_at_the_last_epoch():
    """A stop at the last epoch would land while the trial's Ray Train run frees its workers,
    and leave their placement group, and its CPUs, taken for good."""
    asha = _scheduler(sweep_spec_from_dict(SPACE))  # 6 epochs, a rung after 2
    plain = ASHAScheduler(time_attr=EPOCH, max_t=6, grace_period=2, reduction_factor=3)
    a, b, c = Trial("a"), Trial("b"), Trial("c")
    for scheduler in (asha, plain):
        scheduler.set_search_properties(OBJECTIVE, "max")
        for trial in (a, b, c):
            scheduler.on_trial_add(None, trial)

    def result(epoch: int, value: float) -> dict:
        return {EPOCH: epoch, OBJECTIVE: value}

    assert asha.on_trial_result(None, a, result(2, 1.0)) == "CONTINUE"
    assert asha.on_trial_result(None, b, result(2, 0.5)) == "STOP"  # below the first rung's cutoff
    assert asha.on_trial_result(None, c, result(2, 2.0)) == "CONTINUE"
    assert asha.on_trial_result(None, a, result(6, 1.0)) == "CONTINUE"  # done: it ends by itself
    assert asha.on_trial_result(None, c, result(6, 0.5)) == "CONTINUE"
    # The clock is the epoch reported, not the reports counted: a resumed trial's second report
    # (training_iteration 2) of its last epoch is left to end, though it scores below the rung.
    d = Trial("d")
    asha.on_trial_add(None, d)
    assert asha.on_trial_result(None, d, {"training_iteration": 2, EPOCH: 6, OBJECTIVE: 0.0}) == "CONTINUE"
    # Tune's own ASHA, on the same results, stops a trial at its last epoch.
    assert [plain.on_trial_result(None, t, result(*r)) for t, r in ((a, (2, 1.0)), (b, (2, 0.5)), (a, (6, 1.0)))] == ["CONTINUE", "STOP", "STOP"]


class _Controller:
    """What successive halving calls on Tune's controller, written down: pauses and stops."""

    def __init__(self) -> None:
        self.trials: list = []
        self.paused: list[str] = []
        self.stopped: list[str] = []
        self.scheduler = None

    def get_trials(self):
        return self.trials

    def pause_trial(self, trial, should_checkpoint: bool = True) -> None:
        assert not should_checkpoint  # the checkpoint is Ray Train's: Tune saves none
        self.paused.append(trial.trial_id)
        trial.status = "PAUSED"

    def stop_trial(self, trial) -> None:  # as Tune does for a paused trial: the scheduler is told
        self.stopped.append(trial.trial_id)
        trial.status = "TERMINATED"
        self.scheduler.on_trial_remove(self, trial)


def test_successive_halving_waits_for_every_trial_at_a_rung_then_keeps_the_best():
    """Synchronous successive halving, the decisions alone: 4 trials of 4 epochs, halving at
    epochs 1 and 2. No trial goes on before all four reached the rung; the best half (by the
    objective, a diverged trial last) go on; a trial restarted from its checkpoint reports the
    rung's epoch again without waiting a second time; the last trial to reach a rung is paused
    only if it does not go on; at most one trial runs at once."""
    spec = sweep_spec_from_dict({"name": "s", "base": {"train": {"epochs": 4}},
                                 "tune": {"num_samples": 4, "scheduler": "sha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1}})
    sha = _scheduler(spec)
    assert isinstance(sha, SuccessiveHalving) and sha._rungs == [1, 2]
    sha.set_search_properties(OBJECTIVE, "max")
    controller = _Controller()
    controller.scheduler = sha
    trials = {name: Trial(name) for name in "abcd"}
    for trial in trials.values():
        trial.status = "PENDING"
        controller.trials.append(trial)
        sha.on_trial_add(controller, trial)

    def report(name: str, epoch: int, value: float) -> str:
        trials[name].status = "RUNNING"
        return sha.on_trial_result(controller, trials[name], {EPOCH: epoch, OBJECTIVE: value})

    assert report("a", 1, 2.0) == "NOOP" and trials["a"].status == "PAUSED"
    assert sha.choose_trial_to_run(controller) is trials["b"]  # the next new trial, not a paused one
    trials["b"].status = "RUNNING"
    assert sha.choose_trial_to_run(controller) is None  # one at a time
    assert report("b", 1, float("nan")) == "NOOP"
    assert report("c", 1, 3.0) == "NOOP" and controller.stopped == []  # d has not reached the rung
    assert report("d", 1, 1.0) == "NOOP"
    assert controller.stopped == ["d", "b"] and controller.paused == ["a", "b", "c", "d"]
    assert sha.choose_trial_to_run(controller) in (trials["a"], trials["c"])
    # c goes on: its checkpoint's epoch again, then the next; it waits at epoch 2 for a.
    assert report("c", 1, 3.0) == "CONTINUE"
    assert report("c", 2, 1.0) == "NOOP" and controller.stopped == ["d", "b"]
    # a is the last to reach epoch 2, and the better: it goes on at once, without a pause.
    assert report("a", 1, 2.0) == "CONTINUE" and report("a", 2, 4.0) == "CONTINUE"
    assert controller.stopped == ["d", "b", "c"] and controller.paused == ["a", "b", "c", "d", "c"]
    assert trials["a"].status == "RUNNING" and sha.waiting() == set() and sha.choose_trial_to_run(controller) is None
    assert report("a", 3, 4.0) == "CONTINUE" and report("a", 4, 4.0) == "CONTINUE"

    # A resumed sweep: a fresh scheduler is handed its trials again. The ended ones are not
    # waited for; one that had gone on past the first rung waits at the rung it reached last.
    again = _scheduler(spec)
    again.set_search_properties(OBJECTIVE, "max")
    controller = _Controller()
    controller.scheduler = again
    for name, status in (("a", "PENDING"), ("b", "TERMINATED"), ("c", "PENDING"), ("d", "TERMINATED")):
        trials[name].status = status
        controller.trials.append(trials[name])
        again.on_trial_add(controller, trials[name])
    sha = again
    assert report("a", 2, 4.0) == "NOOP" and report("c", 2, 1.0) == "NOOP"
    assert controller.stopped == ["c"] and sha.choose_trial_to_run(controller) is trials["a"]


def test_a_trial_certain_to_be_among_the_best_at_a_rung_goes_on_without_waiting():
    """6 trials of 4 epochs, halving at epochs 1 and 2 (3 go on, then 1), one at a time. A trial
    goes on at a rung, without the pause (and the restart after it), as soon as too few trials
    are left to come to push it out of the rung's best: the same trials go on as when everyone
    waits. Until the rung below is decided, who reaches the next rung is not known, so a trial
    that went on early waits there. A resumed sweep's fresh scheduler counts the trials it
    stopped at their rung, from their last results, as it did before the interruption (without
    them, it would stop trials it had let past the rung, or wait for a decision that never comes)."""
    spec = sweep_spec_from_dict({"name": "s", "base": {"train": {"epochs": 4}},
                                 "tune": {"num_samples": 6, "scheduler": "sha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1}})
    values = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 0.0}

    def start(statuses: dict[str, str]) -> tuple[SuccessiveHalving, _Controller, dict[str, Trial]]:
        sha, controller = _scheduler(spec), _Controller()
        sha.set_search_properties(OBJECTIVE, "max")
        controller.scheduler = sha
        trials = {name: Trial(name) for name in statuses}
        for name, status in statuses.items():
            trials[name].status = status
            if status == "TERMINATED":  # stopped at the first rung
                trials[name].last_result = {EPOCH: 1, OBJECTIVE: values[name]}
            controller.trials.append(trials[name])
            sha.on_trial_add(controller, trials[name])
        return sha, controller, trials

    sha, controller, trials = start(dict.fromkeys("abcdef", "PENDING"))

    def report(name: str, epoch: int, value: float | None = None) -> str:
        trials[name].status = "RUNNING"
        return sha.on_trial_result(controller, trials[name], {EPOCH: epoch, OBJECTIVE: values[name] if value is None else value})

    assert [report(name, 1) for name in "abcd"] == ["NOOP"] * 4  # d: b and c are behind it, but e and f could pass it
    assert report("e", 1) == "CONTINUE"  # first of five, with one to come: among the best three whatever f scores
    assert sha.waiting() == {"a", "b", "c", "d"} and controller.paused == list("abcd")
    assert report("e", 2, 5.0) == "NOOP"  # alone at epoch 2 so far, but who joins it there is not yet known
    assert report("f", 1) == "NOOP" and controller.stopped == ["b", "a", "f"]  # e, d and c go on: the best three
    assert sha.waiting() == {"e"} and sha.choose_trial_to_run(controller) in (trials["c"], trials["d"])
    assert report("c", 1) == "CONTINUE" and report("c", 2, 6.0) == "NOOP"  # d could still pass it
    assert report("d", 1) == "CONTINUE" and report("d", 2, 0.5) == "NOOP"
    assert controller.stopped == ["b", "a", "f", "e", "d"] and sha.choose_trial_to_run(controller) is trials["c"]

    # Interrupted after the first rung's decision, before c and d started again: e waited at
    # epoch 2. The resumed sweep's trials report their checkpoints' epochs again.
    sha, controller, trials = start({"a": "TERMINATED", "b": "TERMINATED", "c": "PENDING", "d": "PENDING", "e": "PENDING", "f": "TERMINATED"})
    assert report("e", 2, 5.0) == "NOOP"
    assert report("c", 1) == "NOOP"  # e went past epoch 1; d could still pass c
    assert report("d", 1) == "CONTINUE"  # with e and c, the best three of six, as before
    assert controller.stopped == [] and sha.waiting() == {"e"} and sha.choose_trial_to_run(controller) is None  # d trains
    assert report("d", 2, 0.5) == "NOOP" and sha.choose_trial_to_run(controller) is trials["c"]  # c goes on, with d and e
    # Interrupted before any of them started again: the rung is decided again, among the six.
    sha, controller, trials = start({"a": "TERMINATED", "b": "TERMINATED", "c": "PENDING", "d": "PENDING", "e": "PENDING", "f": "TERMINATED"})
    assert [report(name, 1) for name in "ecd"] == ["NOOP", "NOOP", "CONTINUE"]
    assert controller.stopped == [] and sha.choose_trial_to_run(controller) is None  # d trains
    assert report("d", 2) == "NOOP" and sha.choose_trial_to_run(controller) in (trials["c"], trials["e"])  # e and c go on too


def test_a_resumed_sweeps_unfinished_trials_are_held_and_started_again_one_free_slot_at_a_time():
    """A resumed sweep: Tune hands every unfinished trial back pending, and would start them all
    at once, whatever the limit. The scheduler holds each, paused, with its last result: one that
    waited at a rung waits there again and is started again only if it goes on (the ones the rung
    stops are never started again); one that had gone past its rung is started again when a slot
    is free, one at a time. A trial that never reported is pending, as a new one."""

    def resumed(epochs: int, grace: int, trials: dict[str, tuple[str, dict]], cohorts: int = 1) -> tuple[SuccessiveHalving, _Controller, dict[str, Trial]]:
        spec = sweep_spec_from_dict({"name": "s", "base": {"train": {"epochs": epochs}},
                                     "tune": {"num_samples": len(trials), "scheduler": "sha", "grace_period": grace, "reduction_factor": 2, "max_concurrent_trials": 1, "cohorts": cohorts}})
        sha, controller = _scheduler(spec), _Controller()
        sha.set_search_properties(OBJECTIVE, "max")
        controller.scheduler = sha
        handed = {name: Trial(name) for name in trials}
        for name, (status, last_result) in trials.items():
            handed[name].status, handed[name].last_result = status, last_result
            handed[name].experiment_tag = f"{ord(name) - ord('a') + 1}_optim.lr=0.001"  # Tune's: the trial's count, first
            controller.trials.append(handed[name])
            sha.on_trial_add(controller, handed[name])
        return sha, controller, handed

    # 4 epochs, rungs at 1 and 2: three trials waited at the first rung, one had not reported.
    sha, controller, trials = resumed(4, 1, {"a": ("PENDING", {EPOCH: 1, OBJECTIVE: 1.0}), "b": ("PENDING", {EPOCH: 1, OBJECTIVE: 3.0}),
                                             "c": ("PENDING", {EPOCH: 1, OBJECTIVE: 2.0}), "d": ("PENDING", {})})
    assert [t.status for t in trials.values()] == ["PAUSED", "PAUSED", "PAUSED", "PENDING"] and sha.waiting() == {"a", "b", "c"}
    assert sha.choose_trial_to_run(controller) is trials["d"]
    trials["d"].status = "RUNNING"
    assert sha.choose_trial_to_run(controller) is None
    assert sha.on_trial_result(controller, trials["d"], {EPOCH: 1, OBJECTIVE: 0.5}) == "NOOP"  # the last at the rung
    assert controller.stopped == ["a", "d"] and controller.paused == ["d"]  # b and c go on; a never started again
    assert sha.choose_trial_to_run(controller) in (trials["b"], trials["c"])

    # Interrupted later: c waiting at the second rung, b past it (it had gone on at once there)
    # at epoch 3. The rung is decided as the sweep is resumed (b was the one of two to go on):
    # c is stopped without being started again, and b is started again.
    sha, controller, trials = resumed(4, 1, {"a": ("TERMINATED", {EPOCH: 1, OBJECTIVE: 1.0}), "b": ("PENDING", {EPOCH: 3, OBJECTIVE: 5.0}),
                                             "c": ("PENDING", {EPOCH: 2, OBJECTIVE: 2.0}), "d": ("TERMINATED", {EPOCH: 1, OBJECTIVE: 0.5})})
    assert [t.status for t in trials.values()] == ["TERMINATED", "PAUSED", "PAUSED", "TERMINATED"] and sha.waiting() == {"c"}
    assert sha.choose_trial_to_run(controller) is trials["b"] and controller.stopped == ["c"]
    assert sha.on_trial_result(controller, trials["b"], {EPOCH: 3, OBJECTIVE: 5.0}) == "CONTINUE"

    # 8 epochs, rungs at 2 and 4: the two trials the first rung let past it were training (on a
    # bigger cluster) when the sweep was interrupted; resumed with one slot, they are started
    # again one at a time.
    sha, controller, trials = resumed(8, 2, {"a": ("TERMINATED", {EPOCH: 2, OBJECTIVE: 1.0}), "b": ("PENDING", {EPOCH: 3, OBJECTIVE: 5.0}),
                                             "c": ("PENDING", {EPOCH: 3, OBJECTIVE: 6.0}), "d": ("TERMINATED", {EPOCH: 2, OBJECTIVE: 0.5})})
    assert sha.waiting() == set() and sha.choose_trial_to_run(controller) is trials["b"]
    trials["b"].status = "PENDING"  # as Tune marks the chosen trial while its processes start
    assert sha.choose_trial_to_run(controller) is trials["b"]  # not c as well
    trials["b"].status = "RUNNING"
    assert sha.choose_trial_to_run(controller) is None
    assert sha.on_trial_result(controller, trials["b"], {EPOCH: 3, OBJECTIVE: 5.0}) == "CONTINUE"  # its checkpoint's epoch again
    assert sha.on_trial_result(controller, trials["b"], {EPOCH: 4, OBJECTIVE: 5.0}) == "NOOP"  # waits for c at the rung
    assert sha.choose_trial_to_run(controller) is trials["c"] and controller.stopped == []

    # Two cohorts, a and b, then c and d; handed back latest result first, as Tune does. c waits
    # at the first rung for d (not yet reported), in its own cohort; counted in a and b's, it
    # would have been stopped there at once (a went past that rung).
    sha, controller, trials = resumed(4, 1, {"c": ("PENDING", {EPOCH: 1, OBJECTIVE: 2.0}), "a": ("TERMINATED", {EPOCH: 4, OBJECTIVE: 1.0}),
                                             "b": ("TERMINATED", {EPOCH: 1, OBJECTIVE: 0.5}), "d": ("PENDING", {})}, cohorts=2)
    assert sha.choose_trial_to_run(controller) is trials["d"] and controller.stopped == [] and sha.waiting() == {"c"}

    # A tie at the rung's edge (b and c): the earlier created goes on, as in the sweep before
    # the interruption, whatever order the trials come back in.
    sha, controller, trials = resumed(4, 1, {"c": ("PENDING", {EPOCH: 1, OBJECTIVE: 2.0}), "d": ("PENDING", {EPOCH: 1, OBJECTIVE: 3.0}),
                                             "b": ("PENDING", {EPOCH: 1, OBJECTIVE: 2.0}), "a": ("PENDING", {EPOCH: 1, OBJECTIVE: 1.0})})
    assert sha.choose_trial_to_run(controller) in (trials["b"], trials["d"]) and controller.stopped == ["c", "a"]

    # Six trials, five of them waited at the first rung, the sixth had not reported: e, the best
    # of the five, is certain to go on whatever f scores, and goes on without waiting for f.
    sha, controller, trials = resumed(4, 1, {**{name: ("PENDING", {EPOCH: 1, OBJECTIVE: value}) for name, value in zip("abcde", (1.0, 2.0, 3.0, 4.0, 5.0))},
                                             "f": ("PENDING", {})})
    assert sha.choose_trial_to_run(controller) is trials["f"] and sha.waiting() == set("abcd")
    trials["f"].status = "TERMINATED"  # it failed before its first report
    sha.on_trial_error(controller, trials["f"])
    assert sha.choose_trial_to_run(controller) in (trials["e"], trials["d"]) and controller.stopped == ["c", "b", "a"]


def test_under_successive_halving_a_trial_waiting_at_a_rung_leaves_its_slot_to_a_new_one(tmp_path):
    """The searcher's limit: a new trial is suggested only while fewer than ``max_running``
    trials train. A trial paused at a rung frees its slot (Tune's own limit would not, and
    without one Tune would start every trial's processes at once). The limit's state goes
    through Tune's save and restore without the scheduler; the restored limit asks the
    resumed sweep's scheduler. Also for a space that searches nothing."""
    spec = sweep_spec_from_dict({**SPACE, "tune": {"num_samples": 4, "scheduler": "sha", "grace_period": 2, "reduction_factor": 2, "max_concurrent_trials": 2}})
    sha = _scheduler(spec)
    sha.set_search_properties(OBJECTIVE, "max")
    search = SearchGenerator(_search_algorithm(spec, str(tmp_path), sha))
    search.set_search_properties(OBJECTIVE, "max", _param_space(spec))
    controller = _Controller()
    controller.scheduler = sha
    trials = {name: Trial(name) for name in "abcd"}
    for name in "abcd":
        controller.trials.append(trials[name])
        sha.on_trial_add(controller, trials[name])
    limiter = search.searcher
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two train
    trials["a"].status = "RUNNING"
    assert sha.on_trial_result(controller, trials["a"], {EPOCH: 2, OBJECTIVE: 1.0}) == "NOOP"
    assert sha.waiting() == {"a"} and limiter.suggest("c") and limiter.suggest("d") is None

    search.save_to_dir(str(tmp_path), "s")
    again = _scheduler(spec)
    restored = SearchGenerator(_search_algorithm(spec, str(tmp_path), again))
    restored.restore_from_dir(str(tmp_path))
    assert restored.searcher.live_trials == {"a", "b", "c"}
    assert restored.searcher.suggest("d") is None  # the resumed scheduler has seen no rung yet
    again.set_search_properties(OBJECTIVE, "max")
    for name in "abcd":
        again.on_trial_add(controller, trials[name])
    controller.scheduler = again
    assert again.on_trial_result(controller, trials["a"], {EPOCH: 2, OBJECTIVE: 1.0}) == "NOOP"  # its checkpoint's epoch
    assert restored.searcher.suggest("d") is None  # b and c train
    assert again.on_trial_result(controller, trials["b"], {EPOCH: 2, OBJECTIVE: 2.0}) == "NOOP"
    assert restored.searcher.suggest("d")

    nothing = sweep_spec_from_dict({"name": "n", "tune": {"num_samples": 3, "scheduler": "sha", "max_concurrent_trials": 1}})
    limiter = _search_algorithm(nothing, str(tmp_path / "n"), _scheduler(nothing))
    assert limiter.suggest("x") == {} and limiter.suggest("y") is None


def test_in_cohorts_the_next_cohort_is_proposed_once_the_one_before_is_down_to_its_finisher(tmp_path):
    """``tune.cohorts: 2``: 8 trials of 4 epochs in two cohorts of 4, halved after epochs 1 and
    2, two training at once, with a real Optuna study (TPE). The second cohort's first trial is
    not proposed while a trial of the first still waits at a rung, though a slot is free; it is
    once the first cohort is down to its finisher, when Optuna holds the three trials that cohort
    stopped, with their values at the rungs, more than TPE's start-up draws. The cohorts are
    halved apart: the second's rung waits for its own trials only."""
    spec = sweep_spec_from_dict({**SPACE, "base": {"train": {"epochs": 4}},
                                 "tune": {"num_samples": 8, "scheduler": "sha", "cohorts": 2, "grace_period": 1, "reduction_factor": 2,
                                          "max_concurrent_trials": 2}})
    sha = _scheduler(spec)
    sha.set_search_properties(OBJECTIVE, "max")
    search = SearchGenerator(_search_algorithm(spec, str(tmp_path), sha))
    search.set_search_properties(OBJECTIVE, "max", _param_space(spec))
    limiter = search.searcher
    controller = _Controller()
    controller.scheduler = sha
    trials: dict[str, Trial] = {}

    def propose(name: str) -> bool:
        if limiter.suggest(name) is None:
            return False
        trials[name] = Trial(name)
        trials[name].status = "PENDING"
        controller.trials.append(trials[name])
        sha.on_trial_add(controller, trials[name])
        return True

    def report(name: str, epoch: int, value: float) -> str:
        # As Tune tells the scheduler, then the searcher; Tune stops a paused trial, and tells
        # the searcher, without a result.
        trials[name].status = "RUNNING"
        told = len(controller.stopped)
        decision = sha.on_trial_result(controller, trials[name], {EPOCH: epoch, OBJECTIVE: value})
        limiter.on_trial_result(name, {EPOCH: epoch, OBJECTIVE: value})
        for stopped in controller.stopped[told:]:
            limiter.on_trial_complete(stopped)
        return decision

    assert propose("a") and propose("b") and not propose("c")  # two train
    assert report("a", 1, 1.0) == "NOOP" and propose("c") and not propose("d")
    assert report("b", 1, 2.0) == "NOOP" and propose("d")
    assert report("c", 1, 3.0) == "NOOP" and report("d", 1, 4.0) == "CONTINUE"  # d goes on at once, c after a restart
    assert controller.stopped == ["b", "a"]  # the better first
    assert report("c", 2, 5.0) == "NOOP"  # waits at epoch 2 for d
    assert sha.waiting() == {"c"} and not propose("e")  # a slot is free, but the first cohort is not decided
    assert report("d", 2, 6.0) == "CONTINUE" and controller.stopped == ["b", "a", "c"]
    study = limiter.searcher._ot_study
    told = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(told) == 3 > _startup_trials(spec.tune) == 2
    assert sorted((t.state.name, sorted(t.intermediate_values.items())) for t in told) == [
        ("PRUNED", [(1, 1.0)]), ("PRUNED", [(1, 2.0)]), ("PRUNED", [(1, 3.0), (2, 5.0)])]
    assert propose("e") and not propose("f")  # d and e train
    assert report("e", 1, 0.5) == "NOOP" and propose("f")
    assert report("f", 1, 0.7) == "NOOP" and propose("g") and propose("h") is False  # d and g train
    assert report("d", 3, 6.0) == "CONTINUE" and report("d", 4, 6.0) == "CONTINUE" and not propose("h")
    trials["d"].status = "TERMINATED"  # d ends
    sha.on_trial_complete(controller, trials["d"], {EPOCH: 4, OBJECTIVE: 6.0})
    limiter.on_trial_complete("d", {EPOCH: 4, OBJECTIVE: 6.0})
    assert propose("h")
    assert report("g", 1, 0.9) == "NOOP" and controller.stopped == ["b", "a", "c"]  # h has not reached the rung
    assert report("h", 1, 0.1) == "NOOP" and controller.stopped == ["b", "a", "c", "e", "h"]


@pytest.mark.slow
def test_successive_halving_in_a_real_tune_run_of_a_space_that_searches_nothing(local_ray, tmp_path):
    """The scheduler and its searcher's limit as the sweep wires them (no Tune concurrency
    limit), in a real Tune run of 8 trials of a space that searches nothing, with a trainable
    that stands for the trial: it reports an objective of its trial's id every epoch and,
    started again, resumes as a trial's Ray Train run does (its last epoch reported again, then
    the next). Every trial reaches epoch 1; the better half goes on to epoch 2, the best quarter
    to the end; the paused trials are started again, and no epoch is trained twice. (That at
    most two train at once is the unit tests' to show: Tune starts the paused trials again one
    after another, about a second apart, longer than these epochs.)"""
    spec = sweep_spec_from_dict({"name": "n", "base": {"train": {"epochs": 3}},
                                 "tune": {"num_samples": 8, "scheduler": "sha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 2}})
    scheduler = _scheduler(spec)
    progress = tmp_path / "progress"
    progress.mkdir()

    def trainable(config):
        trial_id = ray.tune.get_context().get_trial_id()
        number = float(int(trial_id.rsplit("_", 1)[-1], 16))  # a searcher's trial ids are hex
        done = progress / trial_id
        last = len(done.read_text().split()) if done.exists() else 0
        if last:
            ray.tune.report({EPOCH: last, OBJECTIVE: number})
        for epoch in range(last + 1, 4):
            time.sleep(0.1)
            with open(done, "a") as f:
                f.write(f"{epoch} ")
            ray.tune.report({EPOCH: epoch, OBJECTIVE: number})

    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trainable, {"CPU": 0, "memory": 2**20}),  # as a sweep's trial: no CPU
        tune_config=ray.tune.TuneConfig(metric=OBJECTIVE, mode="max", search_alg=_search_algorithm(spec, str(tmp_path), scheduler),
                                        scheduler=scheduler, num_samples=8, max_concurrent_trials=None),
        run_config=ray.tune.RunConfig(name="tune", storage_path=str(tmp_path / "sweep"), verbose=0,
                                      failure_config=ray.tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    assert not results.errors
    by_objective = sorted(results, key=lambda r: r.metrics[OBJECTIVE])
    assert [r.metrics[EPOCH] for r in by_objective] == [1, 1, 1, 1, 2, 2, 3, 3]
    for r in results:  # each epoch trained once, in order, across the trial's starts
        assert (progress / r.metrics["trial_id"]).read_text().split() == [str(e) for e in range(1, r.metrics[EPOCH] + 1)]


@pytest.mark.parametrize("epochs,grace,rf", [(8, 1, 3), (8, 1, 2), (16, 2, 3), (9, 1, 3), (6, 2, 3), (10, 1, 2.5), (3, 4, 2), (1, 1, 3)])
def test_the_rungs_validate_names_are_where_the_sweeps_asha_stops_a_trial(epochs, grace, rf):
    """``TuneSpec.asha_rungs`` (what ``validate`` prints) against the scheduler a sweep runs: a
    trial that reports as well as the first trial every epoch but one is stopped at that epoch
    exactly when the epoch is a rung."""
    spec = sweep_spec_from_dict({**SPACE, "base": {"train": {"epochs": epochs}}, "tune": {"scheduler": "asha", "grace_period": grace, "reduction_factor": rf}})
    stops_at = []
    for worse in range(1, epochs + 1):
        asha, first, probe = _scheduler(spec), Trial("first"), Trial("probe")
        asha.set_search_properties(OBJECTIVE, "max")
        asha.on_trial_add(None, first)
        asha.on_trial_add(None, probe)
        for epoch in range(1, epochs + 1):
            assert asha.on_trial_result(None, first, {EPOCH: epoch, OBJECTIVE: 1.0}) == "CONTINUE"
        for epoch in range(1, worse + 1):
            decision = asha.on_trial_result(None, probe, {EPOCH: epoch, OBJECTIVE: 0.0 if epoch == worse else 1.0})
        stops_at += [worse] if decision == "STOP" else []
    assert spec.tune.asha_rungs(epochs) == stops_at
    assert sweep_spec_from_dict({**SPACE, "tune": {"scheduler": "none"}}).tune.asha_rungs(epochs) == []
