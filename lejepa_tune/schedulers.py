"""Ray Tune schedulers for a sweep of LeJEPA trials, whose clock is the epoch every report
carries (``metrics.EPOCH``), not Tune's ``training_iteration``.

- :class:`FinishingASHA`: Ray Tune's ASHA, leaving a trial at its last epoch to end by itself.
- :class:`SuccessiveHalving`: synchronous successive halving, in one cohort or several, each
  trial waiting, paused, at every rung for the rest of its cohort; with :class:`RungLimiter`,
  the limit on concurrent trials that does not count the waiting ones.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from .metrics import EPOCH

logger = logging.getLogger(__name__)

__all__ = ["FinishingASHA", "SuccessiveHalving", "RungLimiter", "NoSearch"]


class FinishingASHA(ASHAScheduler):
    """Ray Tune's ASHA, except that a trial at its last epoch is left to end by itself.

    Tune's ASHA stops every trial that reports ``max_t``. By then the trial's Ray Train run is
    shutting down: its controller first stops Ray Train's placement-group cleaner, then frees
    the workers' placement group. Tune's stop kills the trial's actor, and with it the
    controller, in between: that placement group and its CPUs are never freed. Once two trials
    of a 32-trial sweep on two CPUs had ended that way, every later trial waited for CPUs
    forever. A trial at its last epoch has nothing left to stop: it ends by itself.

    Its clock is the epoch every report carries, not Tune's ``training_iteration``: that counts
    the reports of the trial's current process, so it restarts at 1 when a sweep resumes, and
    runs one ahead of the epochs after a Ray Train worker restart (which reports its
    checkpoint's epoch again)."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SuccessiveHalving(FIFOScheduler):
    """Synchronous successive halving: every trial trains to the first rung (``rungs[0]``
    epochs) and waits there, paused; once all the trials of its cohort have reached it (or
    ended), the best ``1/reduction_factor`` of them by the metric (at least one) go on to the
    next rung and the others are stopped; and so on, the last rung being the trials' full length.

    The trials are halved in cohorts (``cohorts``: how many trials each holds, in the order they
    are added; one cohort of all ``num_samples`` by default), each on its own. A later cohort's
    trials are proposed only once the cohort before is down to its finishers, the trials that
    train to the end (:meth:`may_add`, which :class:`RungLimiter` asks): by then the searcher
    has been told of every trial that cohort stopped, and its value at the rung where it stopped,
    and a searcher that learns (TPE) proposes the next cohort from them, as BOHB does.

    Unlike ASHA, a trial is compared with every other trial of its cohort at the same epoch, not
    only with those that reached the rung before it: the order in which trials arrive does not
    matter, and a searcher's late, better trials gain no free pass. The price is the waiting: a paused trial
    holds no resources, but is started again to go on (its Ray Train run, named after the trial,
    resumes from its checkpoint at the rung exactly), and the searcher learns from no trial
    before its cohort's last rung. A trial that reaches a rung certain to be among its best,
    whoever else is still to reach it (too few are left to push it out), goes on at once, not
    paused at all: the same trials go on as if all had waited, with fewer restarts (at the latest,
    the last trial to reach a rung goes on at once if it is among the best). Tune pauses a function trainable through a checkpoint of Tune's own,
    which these trials do not report: the trial is paused without one (its checkpoint is Ray
    Train's). At most ``max_running`` trials train at once: this scheduler starts no more
    paused trials again, and its searcher's :class:`RungLimiter` suggests no more new ones
    (Tune's concurrency limit would count the paused trials as running, and wait for them for
    ever).

    Its clock is the epoch every report carries (a resumed trial reports its checkpoint's epoch
    again, which is not a rung reached a second time). A resumed sweep's unfinished trials,
    which Tune hands back pending all at once, are held paused with their last results: those
    that waited at a rung wait there again, started again only if they go on, and the others
    are started again as slots free (at most ``max_running`` train here too)."""

    def __init__(self, rungs: list[int], reduction_factor: float, cohorts: Sequence[int], max_running: int, time_attr: str = EPOCH) -> None:
        super().__init__()
        self._rungs = sorted(rungs)
        self._rf = reduction_factor
        self._cohort_sizes = list(cohorts)
        self._max_running = max_running
        self._time_attr = time_attr
        self._mode = "max"
        self._trials: dict[str, Any] = {}
        self._cohort: dict[str, int] = {}  # trial id -> its cohort (in the order the trials were added)
        self._order: dict[str, int] = {}  # trial id -> its place among the trials created (as added, without Tune's tag)
        self._passed: dict[str, int] = {}  # trial id -> how many rungs it has been let past
        self._scores: dict[str, dict[int, float]] = {}  # trial id -> {rung level: its score there}, for each rung it reached
        self._decided: dict[int, int] = {}  # cohort -> how many of its rungs are decided
        self._waiting: set[str] = set()  # paused at a rung, undecided
        self._left: dict[str, int] = {}  # trial id -> the rung it waited at, undecided, when it ended
        self._promoted: set[str] = set()  # paused, to be started again
        self._held: list[str] = []  # a resumed sweep's unfinished trials, paused, to be started again as slots free
        self._restored = False  # held trials added, their rungs not yet looked at
        self._ended: set[str] = set()

    _supports_buffered_results = False  # a result at a rung must pause the trial before the next epoch's

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if not super().set_search_properties(metric, mode, **spec):
            return False
        self._mode = mode or getattr(self, "_mode", None) or "max"
        return True

    def _reached(self, epoch: float) -> int:
        """How many rungs a trial at ``epoch`` has reached."""
        return sum(r <= epoch for r in self._rungs)

    def _let_past(self, epoch: float) -> int:
        """How many rungs a trial that reports ``epoch`` had been let past: every rung it reached,
        but the one at ``epoch`` itself, where it may wait."""
        level = self._reached(epoch)
        return level - 1 if epoch in self._rungs else level

    def _rungs_reached(self, tid: str) -> int:
        """How many rungs the trial ``tid`` has reached (it has a score at each)."""
        return max(self._scores.get(tid, ()), default=0)

    def _score(self, result: Mapping[str, Any]) -> float:
        """The metric of a result, higher better; a missing or non-finite one the worst."""
        value = result.get(self._metric, math.nan)
        value = value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf if self._mode == "max" else math.inf
        return value if self._mode == "max" else -value

    def on_trial_add(self, tune_controller, trial) -> None:
        tid = trial.trial_id
        self._trials[tid] = trial
        self._order.setdefault(tid, self._created(trial, default=len(self._cohort)))
        self._cohort.setdefault(tid, self._cohort_at(self._order[tid]))
        self._passed.setdefault(tid, 0)
        self._scores.setdefault(tid, {})
        status, result = getattr(trial, "status", None), getattr(trial, "last_result", None) or {}
        if status in ("TERMINATED", "ERROR"):  # a resumed sweep's ended trial: stopped at the rung where its last result is
            self._count_last(tid, result)
            self._ended.add(tid)
        elif status == "PENDING" and result.get(self._time_attr):
            # A resumed sweep's unfinished trial, which Tune hands back pending and would start
            # with all the others at once. It is held, paused, with its last result: one that
            # waited at a rung waits there again, and is started again only if it goes on; the
            # others are started again as slots free (choose_trial_to_run).
            if self._count_last(tid, result) > self._passed[tid]:
                self._waiting.add(tid)
            else:
                self._held.append(tid)
            trial.set_status("PAUSED")  # before Tune files the trial by its status
            self._restored = True

    def _count_last(self, tid: str, result: Mapping[str, Any]) -> int:
        """Counts a resumed sweep's trial at the rungs its last result reached, as before the
        interruption: let past each but the one at its epoch, scored at the last. Returns how
        many rungs it reached."""
        epoch = result.get(self._time_attr, 0)
        level = self._reached(epoch)
        self._passed[tid] = self._let_past(epoch)
        if level:
            self._scores[tid][level] = self._score(result)
        return level

    @staticmethod
    def _created(trial, default: int) -> int:
        """The trial's place among the sweep's trials, counting from 0, from the tag Tune's search
        gives it (its count, from 1, first): a resumed sweep's trials come back to the scheduler
        latest result first, not in the order they were created. ``default`` without one."""
        head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
        return int(head) - 1 if head.isdigit() else default

    def _resume(self, tune_controller) -> None:
        """A resumed sweep's rungs, once its trials are all back: those its held trials decide
        are decided, and a held trial certain to be among the best at its rung goes on."""
        self._decide(tune_controller)
        for tid in sorted(self._waiting, key=self._order.__getitem__):
            level = self._rungs_reached(tid)
            if self._decided.get(self._cohort[tid], 0) == level - 1 and self._certain(tid, level):
                self._waiting.discard(tid)
                self._passed[tid] = level
                self._promoted.add(tid)
        self._decide(tune_controller)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        tid = trial.trial_id
        epoch = result.get(self._time_attr, 0)
        # The rungs this epoch has reached: one more than before, or, for a trial of a resumed
        # sweep that had gone on past a rung, the rung it reached last.
        level = self._reached(epoch)
        if level <= self._rungs_reached(tid):
            return TrialScheduler.CONTINUE
        self._scores[tid][level] = self._score(result)
        self._promoted.discard(tid)
        # Only a trial let past the rungs below reaches a rung; one that reports an epoch past
        # the rung (a resumed sweep's) had been let past it too.
        self._passed[tid] = max(self._passed[tid], self._let_past(epoch))
        cohort = self._cohort[tid]
        self._decide(tune_controller, below=(cohort, level))
        decided = self._decided.get(cohort, 0)
        if self._passed[tid] >= level or (decided == level - 1 and self._certain(tid, level)):
            # Certain to be among the best at this rung, whoever else reaches it (at the latest,
            # the last trial to reach it, if among its best): it goes on without a pause, which
            # would end its processes only to start them again from its checkpoint. (Until the
            # rung below is decided, who else reaches this one is not known.)
            self._passed[tid] = max(self._passed[tid], level)
            self._decide(tune_controller)
            return TrialScheduler.CONTINUE
        tune_controller.pause_trial(trial, should_checkpoint=False)
        self._waiting.add(tid)
        self._decide(tune_controller)  # the last to reach the rung, and it stops
        return TrialScheduler.NOOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._end(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._end(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._end(tune_controller, trial)

    def _end(self, tune_controller, trial) -> None:
        tid = trial.trial_id
        if tid in self._waiting:
            self._left[tid] = self._rungs_reached(tid)
        self._ended.add(tid)
        self._waiting.discard(tid)
        self._promoted.discard(tid)
        self._decide(tune_controller)

    def _cohort_at(self, index: int) -> int:
        """The cohort of the ``index``-th trial added (counting from 0)."""
        end = 0
        for cohort, size in enumerate(self._cohort_sizes):
            end += size
            if index < end:
                return cohort
        return len(self._cohort_sizes) - 1

    def _members(self, cohort: int) -> list[str]:
        """The trials of ``cohort`` added so far, in the order they were created (a resumed
        sweep's trials come back in another)."""
        return sorted((t for t, c in self._cohort.items() if c == cohort), key=self._order.__getitem__)

    def _field(self, cohort: int, level: int) -> tuple[list[str], list[str], int]:
        """The trials of ``cohort`` that reached the rung ``level``, those already let past it
        and the others, best first (ties: the earlier created first, the sort being stable); and
        how many of the cohort's trials may still reach it (trials not yet added among them)."""
        members = self._members(cohort)
        reached = {t: self._rungs_reached(t) for t in members}
        field = [t for t in members if reached[t] >= level and self._left.get(t) != level]
        past = [t for t in field if self._passed[t] >= level]
        rest = sorted((t for t in field if self._passed[t] < level), key=lambda t: -self._scores[t][level])
        to_come = sum(1 for t in members if t not in self._ended and reached[t] < level and self._passed[t] >= level - 1)
        if level == 1:
            to_come += self._cohort_sizes[cohort] - len(members)
        return past, rest, to_come

    def _keep(self, reached: int) -> int:
        """How many of the ``reached`` trials at a rung go on: ``1/reduction_factor``, at least one."""
        return max(1, int(reached // self._rf))

    def _certain(self, tid: str, level: int) -> bool:
        """Whether ``tid``, at the rung ``level`` of its cohort, whose rungs below are decided, is
        among the best there whoever else reaches it: fewer trials can end ahead of it than the
        rung keeps, counting as ahead every trial still to come."""
        past, rest, to_come = self._field(self._cohort[tid], level)
        ahead = len(past) + rest.index(tid) + to_come
        return ahead < self._keep(len(past) + len(rest))

    def _decide(self, tune_controller, below: tuple[int, int] | None = None) -> None:
        """Decides every rung whose trials have all reached it or ended, in each cohort from its
        lowest rung up (in ``below``'s cohort, only the rungs under its level): the best
        ``1/reduction_factor`` of those that reached it (at least one) go on, counting those
        already let past it; the others stop."""
        for cohort in range(len(self._cohort_sizes)):
            while self._decided.get(cohort, 0) < len(self._rungs):
                level = self._decided.get(cohort, 0) + 1
                if below is not None and below[0] == cohort and level >= below[1]:
                    break
                past, rest, to_come = self._field(cohort, level)
                if to_come:  # at the first rung, the trials not yet added among them
                    break
                more = max(0, self._keep(len(past) + len(rest)) - len(past))
                self._decided[cohort] = level
                self._apply(tune_controller, rest[:more], rest[more:], level, len(past))

    def _apply(self, tune_controller, best: list[str], rest: list[str], level: int, past: int) -> None:
        """Carries out a rung's decision: ``best`` go on (those paused are started again),
        ``rest`` stop; ``past`` trials had gone on already."""
        # The decision is written down whole before any trial is stopped: Tune tells the
        # scheduler of each stop (on_trial_remove), which comes back here.
        self._waiting.difference_update(best + rest)
        for t in best:
            self._passed[t] = level
        self._promoted.update(t for t in best if t not in self._ended)
        live = [t for t in rest if t not in self._ended]
        self._ended.update(rest)
        if best or live:
            logger.info("successive halving after epoch %d: %d of %d trials go on (%s)", self._rungs[level - 1], past + len(best),
                        past + len(best) + len(rest), ", ".join(best) or "those gone on already")
        for trial_id in live:
            tune_controller.stop_trial(self._trials[trial_id])

    @property
    def max_running(self) -> int:
        return self._max_running

    def waiting(self) -> frozenset[str]:
        """The trials paused at a rung, not yet decided (they hold no resources)."""
        return frozenset(self._waiting)

    def may_add(self) -> bool:
        """Whether the next trial may be proposed: always in the first cohort; in a later one,
        once every trial of the cohort before has ended or been let past its last rung."""
        cohort = self._cohort_at(len(self._cohort))
        if cohort == 0 or self._cohort_at(len(self._cohort) - 1) == cohort:  # not a cohort's first trial
            return True
        before = self._members(cohort - 1)
        last = len(self._rungs)
        return len(before) >= self._cohort_sizes[cohort - 1] and all(t in self._ended or self._passed[t] >= last for t in before)

    def choose_trial_to_run(self, tune_controller):
        if self._restored:
            self._restored = False
            self._resume(tune_controller)
        trials = tune_controller.get_trials()
        if sum(t.status == "RUNNING" for t in trials) >= self._max_running:
            return None
        for trial in trials:
            if trial.status == "PENDING":
                return trial
        # None pending (Tune makes the chosen trial pending at once): so one at a time, and never
        # more than the free slots.
        for tid in list(self._held):
            self._held.remove(tid)
            if tid not in self._ended and self._trials[tid].status == "PAUSED":
                return self._trials[tid]
        for trial in trials:
            if trial.status == "PAUSED" and trial.trial_id in self._promoted:
                return trial
        return None

    def debug_string(self) -> str:
        waiting = len(self._waiting)
        return f"Synchronous successive halving: rungs at epochs {self._rungs}, {waiting} trial{'s' if waiting != 1 else ''} waiting at a rung."


class NoSearch(Searcher):
    """The searcher of a space that searches nothing: every trial trains the base config (Tune's
    own generator does this where no searcher is given)."""

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class RungLimiter(ConcurrencyLimiter):
    """Tune's limit on concurrent trials, for synchronous successive halving: a trial that
    waits, paused, at a rung holds no resources and is not counted.

    Tune's own limit counts a paused trial as running, so it would start no trial while others
    wait at a rung, and wait for ever. Without a limit, Tune starts every trial's actor (and its
    Ray Train controller) at once, since they reserve no CPU: the trials' Ray Train workers then
    queue for the CPUs, while up to ``num_samples`` sets of idle processes compete with them
    for the cores and the memory. Here a new trial is suggested only while fewer than
    ``max_concurrent`` trials train, and the next cohort's only once the scheduler lets it in;
    the scheduler says which trials wait (``SuccessiveHalving.waiting``) and whether the next
    may be added (``SuccessiveHalving.may_add``)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, scheduler: SuccessiveHalving) -> None:
        super().__init__(searcher, max_concurrent)
        self._scheduler = scheduler

    def suggest(self, trial_id: str) -> dict | None:
        if not self._scheduler.may_add():
            return None
        # Ray's limit on the live trials, raised by those of them that wait.
        waiting = len(self.live_trials.intersection(self._scheduler.waiting()))
        self.max_concurrent += waiting
        try:
            return super().suggest(trial_id)
        finally:
            self.max_concurrent -= waiting

    def get_state(self) -> dict:
        # The scheduler is not the searcher's state (Tune deep-copies the state it saves).
        scheduler, self._scheduler = self._scheduler, None
        try:
            state = super().get_state()
        finally:
            self._scheduler = scheduler
        del state["_scheduler"]
        return state
