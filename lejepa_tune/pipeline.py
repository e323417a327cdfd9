"""The stages of ``lejepa-tune run``, one after the other: the sweep, then the analysis, then
the report, then what MLflow shows of them. Each stage takes the previous one's output; each
also runs alone (``lejepa-tune report`` starts from records).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


from .analysis import SweepAnalysis, agreement_rows, analyse, headline_metrics
from .config import ConfigError
from .metrics import OBJECTIVE
from .records import RECORDS_FILE, SweepRecords, read_records, trial_label
from .report import correlation, regret_points, write_report
from .tracking import CHOSEN_TAG, NEAR_TIE_TAG, ROLE_TAG, check_tracking_uri, open_client, resolve_tracking_uri

__all__ = ["publish", "describe", "load_records", "analyse_and_report", "CHOSEN_TAG", "NEAR_TIE_TAG", "CRITERION_TAG", "CHOICE_TAG", "NOTE_TAG"]

CRITERION_TAG = "lejepa_tune.criterion"
CHOICE_TAG = "lejepa_tune.choice"
NOTE_TAG = "mlflow.note.content"  # the description MLflow shows on a run's page


def publish(analysis: SweepAnalysis | None, records: SweepRecords, report_dir: Path | None) -> None:
    """Puts the analysis on the sweep's MLflow parent run: the headline agreement metrics, the
    criterion and the choice as tags (``lejepa_tune.chosen=true`` on the chosen trial's own run,
    and on each near-tie's run ``lejepa_tune.near_tie``, the share of the resamples on which the
    choice is the higher), the full agreement table, the report and the records as artifacts."""
    if records.tracking_uri is None or records.parent_run_id is None:
        return
    client = open_client(records.tracking_uri)
    parent = records.parent_run_id
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RECORDS_FILE).write_text(records.to_json())
        client.log_artifact(parent, str(Path(tmp) / RECORDS_FILE))
    if analysis is None:
        client.set_tag(parent, CHOICE_TAG, "none: no trial completed")
        return
    sel = analysis.selection
    for name, value in headline_metrics(sel).items():
        client.log_metric(parent, name, value, step=0)
    client.log_table(parent, data={k: [r[k] for r in agreement_rows(sel)] for k in agreement_rows(sel)[0]}, artifact_file="selection/criteria.json")
    client.set_tag(parent, CRITERION_TAG, sel.default)
    client.set_tag(parent, CHOICE_TAG, sel.choice or "none")
    client.set_tag(parent, NOTE_TAG, describe(analysis))
    chosen = next((t for t in records.trials if t.trial_id == sel.choice), None)
    if chosen is not None and chosen.run_id:
        client.set_tag(chosen.run_id, CHOSEN_TAG, "true")
    runs = {t.trial_id: t.run_id for t in records.trials}
    for trial_id, share in sel.near_ties.items():
        if runs.get(trial_id):
            client.set_tag(runs[trial_id], NEAR_TIE_TAG, f"{share:.2f}")
    if report_dir is not None:
        client.log_artifacts(parent, str(report_dir), "selection")


_SAMPLERS = {"tpe": "TPE", "random": "random sampler"}


def describe(analysis: SweepAnalysis) -> str:
    """The sweep run's description (markdown): the space, the objective, the pick and how well
    the pick agrees with the labelled reference."""
    records, sel = analysis.records, analysis.selection
    tune = records.spec.get("tune", {})
    a = sel.agreements[sel.default]
    chosen = next((t for t in records.trials if t.trial_id == sel.choice), None)
    space = ", ".join(f"`{k}` {d.get('type')} {d.get('values', [d.get('low'), d.get('high')])}" for k, d in records.spec.get("search", {}).items())
    lines = [
        f"**Sweep** `{records.name}`: {records.summary()} over {space or 'nothing (one point)'}.",
        f"**Objective** `{sel.default}` ({sel.reason}); searched by Optuna's {_SAMPLERS.get(tune.get('searcher', 'tpe'), tune.get('searcher'))} "
        f"on `{tune.get('metric', OBJECTIVE)}`" + (f", trials stopped early by {tune['scheduler'].upper()}." if tune.get("scheduler", "none") != "none" else "."),
        f"**Chosen without labels:** trial `{sel.choice}`" + (f" ({trial_label(chosen.params)})." if chosen is not None else "."),
        f"**Judged with labels** against `{sel.reference}`: Spearman {correlation(a.spearman)} (95% CI {correlation(a.spearman_ci[0])} to {correlation(a.spearman_ci[1])}; "
        f"noise ceiling {correlation(sel.noise_ceiling)}), regret {regret_points(a.regret)} points, best trial by labels `{sel.best_by_reference}`.",
    ]
    lines += [f"**Warning:** {w}." for w in analysis.warnings]
    return "\n\n".join(lines)


def load_records(sweep: str, tracking_uri: str | None = None) -> SweepRecords:
    """A sweep's records from its directory (or storage URI), or, given an MLflow experiment
    name, from the ``records.json`` artifact of its latest sweep run: through the tracking
    server alone, no local path needed."""
    if "://" in sweep or Path(sweep).is_dir() or sweep.endswith(".json"):
        try:
            return read_records(sweep)
        except FileNotFoundError:
            raise ConfigError(f"{sweep}: not a finished sweep directory (no {RECORDS_FILE})") from None
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, "--tracking-uri" if tracking_uri else "tracking URI")
    client = open_client(uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise ConfigError(f"{sweep}: neither a sweep directory nor an MLflow experiment at {uri}")
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        names = [a.path for a in client.list_artifacts(run.info.run_id)]
        if RECORDS_FILE in names:
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run.info.run_id, RECORDS_FILE, tmp)
                return SweepRecords.from_json(Path(path).read_text())
    raise ConfigError(f"{sweep}: the MLflow experiment has no finished sweep (no {RECORDS_FILE} on its sweep runs)")


def analyse_and_report(records: SweepRecords, out_dir: Path | None = None) -> tuple[SweepAnalysis | None, dict[str, Path]]:
    """The analysis and the report of a sweep's records (nothing when no trial completed)."""
    if not any(t.status == "completed" for t in records.trials):
        return None, {}
    analysis = analyse(records)
    files = write_report(analysis, out_dir or _report_dir(records))
    return analysis, files


def _report_dir(records: SweepRecords) -> Path:
    if "://" in records.sweep_dir:  # remote storage: the report is written locally
        return Path("reports") / records.name
    return Path(records.sweep_dir) / "report"
