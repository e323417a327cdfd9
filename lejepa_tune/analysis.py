"""The analysis stage: a sweep's records in, the label-free choice and how far to trust it out.

It reads :class:`~lejepa_tune.records.SweepRecords` only (from the sweep just run, from
``records.json`` or from MLflow), so it runs the same right after a sweep and, later, on its own
(``lejepa-tune report``). It never imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .records import SweepRecords
from .selection import SelectionReport, evaluate_criteria, near_tie_note, reliability_warnings

__all__ = ["SweepAnalysis", "analyse", "headline_metrics", "agreement_rows"]

# The criteria whose agreement goes on the MLflow parent run as metrics (the rest go in its
# table): the objective, and the two training losses the paper proposes.
HEADLINE = ("objective", "loss", "scaled_loss")


@dataclass(frozen=True)
class SweepAnalysis:
    records: SweepRecords
    selection: SelectionReport
    warnings: tuple[str, ...]

    @property
    def choice(self) -> str | None:
        return self.selection.choice


def analyse(records: SweepRecords, n_boot: int = 1000) -> SweepAnalysis:
    """Every criterion against the reference, the choice, and the warnings that go with it."""
    selection = evaluate_criteria(records, n_boot=n_boot)
    notes = list(reliability_warnings(records.searched, selection.default))
    valid = selection.validity[selection.default]
    if not valid.valid:
        notes.insert(0, f"the choice uses {selection.default}, which is not valid for this sweep: {valid.reason}")
    if selection.near_ties:
        notes.append(near_tie_note(selection.choice, selection.default, selection.values[selection.default], selection.near_ties))
    if selection.choice is None:
        notes.insert(0, "no completed trial has a value of the criterion: nothing is chosen")
    if records.interrupted:
        done = sum(t.status == "completed" for t in records.trials)
        planned = records.spec.get("tune", {}).get("num_samples", len(records.trials))
        notes.insert(0, f"the sweep was interrupted, with {done} of its {planned} trials completed: the choice is among those; "
                        f"`lejepa-tune run --resume {records.sweep_dir}` continues it")
    return SweepAnalysis(records, selection, tuple(notes))


def agreement_rows(report: SelectionReport) -> list[dict[str, float | str | bool]]:
    """One row per criterion: its agreement with the reference, as plain data (the CSV, the
    MLflow table and the HTML page all show these)."""
    rows = []
    for name in report.criteria:
        a = report.agreements[name]
        rows.append({
            "criterion": name,
            "mode": report.modes[name],
            "valid": report.validity[name].valid,
            "n": a.n,
            "spearman": a.spearman,
            "spearman_lo": a.spearman_ci[0],
            "spearman_hi": a.spearman_ci[1],
            "kendall": a.kendall,
            "within_spearman": a.within,
            "regret": a.regret,
            "top3_overlap": a.top3_overlap,
            "pick": report.picks[name] or "",
        })
    return rows


def headline_metrics(report: SelectionReport) -> dict[str, float]:
    """The few numbers for the sweep's MLflow parent run: ``selection/<criterion>/spearman``,
    ``kendall`` and ``regret`` of the headline criteria (and of the default, if another), and
    ``selection/noise_ceiling``; rounded to 4 places; undefined values are left out (MLflow
    would show a NaN as a number)."""
    out = {}
    for name in dict.fromkeys((report.default, *HEADLINE)):
        a = report.agreements[name]
        for stat, value in (("spearman", a.spearman), ("kendall", a.kendall), ("regret", a.regret)):
            if math.isfinite(value):
                out[f"selection/{name}/{stat}"] = round(float(value), 4)
    if math.isfinite(report.noise_ceiling):
        out["selection/noise_ceiling"] = round(report.noise_ceiling, 4)
    return out
