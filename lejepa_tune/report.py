"""Reports of a sweep: terminal tables of its trials, and the label-free selection report
(terminal summary, scatter plots, CSV, a self-contained HTML page)."""

from __future__ import annotations

import csv
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = [
    "format_table",
    "format_trials_table",
    "format_selection",
    "write_plots",
    "write_csv",
    "write_html",
    "SweepAnalysis",
    "load_sweep",
    "analyse_sweep",
    "write_report",
]

TABLE_METRICS = ("train/loss", "eval/linear_acc", "eval/knn_acc")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def format_trials_table(trials, searched: Sequence[str], metric: str = "train/loss", mark: str | None = None) -> str:
    """One row per trial: id, status, the searched values and the headline metrics, sorted
    by the label-free ``metric``; the trial ``mark`` (the label-free pick) is starred."""
    metrics = [metric, *(m for m in TABLE_METRICS if m != metric)]

    def key(t):
        v = t.metrics.get(metric, math.nan)
        return (t.status != "completed", math.isnan(v), v)

    rows = [
        [("* " if t.trial_id == mark else "  ") + t.trial_id, t.status, *(t.params.get(k) for k in searched), *(t.metrics.get(m) for m in metrics)]
        for t in sorted(trials, key=key)
    ]
    return format_table(["  trial", "status", *searched, *metrics], rows)


# ----------------------------------------------------------------------------------------------
# Label-free selection: terminal summary, scatter plots, CSV and a self-contained HTML page.


def _trial_ids(trials) -> list[str]:
    return [t.trial_id for t in trials]


def _ci(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def _selection_rows(report) -> list[list[Any]]:
    rows = []
    for name in report.criteria:
        a = report.agreements[name]
        valid = report.validity[name].valid
        rows.append([
            ("* " if name == report.default else "  ") + name,
            report.modes[name],
            "yes" if valid else "NO",
            a.n,
            a.spearman,
            _ci(a.spearman_ci),
            a.kendall,
            a.regret,
            a.top3_overlap,
            report.picks[name] or "-",
            ", ".join(a.excluded) or "-",
        ])
    return rows


def _invalid(report) -> list[tuple[list[str], str]]:
    """The criteria not valid for the sweep, grouped by reason: ``[(names, reason), ...]``."""
    groups: dict[str, list[str]] = {}
    for name in report.criteria:
        valid, why = report.validity[name]
        if not valid:
            groups.setdefault(why, []).append(name)
    return [(names, why) for why, names in groups.items()]


SELECTION_HEADER = ("  criterion", "mode", "valid", "n", "spearman", "95% CI", "kendall", "regret", "top3", "pick", "excluded")


def format_selection(report) -> str:
    """The terminal summary of :func:`lejepa_tune.selection.evaluate_criteria`: per criterion
    its agreement with the labelled accuracy (Spearman ρ with its bootstrap interval, Kendall
    τ, regret of its pick, top-3 overlap), the trials it used and dropped, whether it is valid
    for this sweep, and its pick; then the default criterion and why."""
    lines = [
        f"Label-free selection for sweep '{report.sweep}' (criteria judged against {report.accuracy};"
        " ρ > 0 means a better criterion value goes with a higher accuracy)",
        "",
        format_table(SELECTION_HEADER, _selection_rows(report)),
        "",
        f"default criterion: {report.default} -> trial {report.picks[report.default] or '(none)'}",
        f"  why: {report.reason}",
    ]
    lines += _notes(report)
    return "\n".join(lines)


def _notes(report) -> list[str]:
    """The sentences that follow the default criterion, in the terminal and the HTML page."""
    notes = [f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not valid here: {why}" for names, why in _invalid(report)]
    if report.best_by_accuracy is not None:
        notes.append(f"best by {report.accuracy} (labels, for reference only): trial {report.best_by_accuracy}")
    if report.not_completed:
        notes.append("not completed, never picked nor scored: " + ", ".join(f"{t} ({s})" for t, s in report.not_completed.items()))
    return notes


def _plot_points(report, trials, name: str) -> tuple[list[str], list[float], list[float], list[float]]:
    """Completed trials with a finite criterion value and accuracy: ids, x, y, λ."""
    ids, xs, ys, lams = [], [], [], []
    for t in trials:
        x = report.values[name].get(t.trial_id, math.nan)
        y = t.metrics.get(report.accuracy, math.nan)
        if t.status == "completed" and math.isfinite(x) and math.isfinite(y):
            ids.append(t.trial_id)
            xs.append(x)
            ys.append(float(y))
            lams.append(report.lams.get(t.trial_id, math.nan))
    return ids, xs, ys, lams


def write_plots(report, trials, out_dir: str | Path) -> list[Path]:
    """One scatter PNG per criterion with at least one scored trial, ``selection_<name>.png``:
    the criterion against the labelled accuracy, one point per completed trial coloured by λ
    (log scale, with a colour bar), the criterion's pick circled, ρ in the title."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in report.criteria:
        ids, xs, ys, lams = _plot_points(report, trials, name)
        if not ids:
            continue
        fig = Figure(figsize=(6.0, 4.5), dpi=100)
        ax = fig.add_subplot()
        positive = [lam for lam in lams if math.isfinite(lam) and lam > 0]
        if positive:
            lo, hi = min(positive), max(positive)
            if lo == hi:  # one λ in the whole sweep: a degenerate log range
                lo, hi = lo / 1.5, hi * 1.5
            colours = [lam if math.isfinite(lam) and lam > 0 else lo for lam in lams]
            points = ax.scatter(xs, ys, c=colours, cmap="viridis", norm=LogNorm(lo, hi), s=40, zorder=2)
            fig.colorbar(points, ax=ax, label="λ (loss.lam)")
        else:
            ax.scatter(xs, ys, color="tab:blue", s=40, zorder=2)
        pick = report.picks[name]
        if pick in ids:
            i = ids.index(pick)
            ax.scatter([xs[i]], [ys[i]], s=260, facecolors="none", edgecolors="red", linewidths=2, zorder=3, label=f"pick: {pick}")
            ax.legend(loc="best", fontsize=8)
        a = report.agreements[name]
        rho = "ρ undefined" if not math.isfinite(a.spearman) else f"Spearman ρ = {a.spearman:.2f} {_ci(a.spearman_ci)}"
        flag = "" if report.validity[name].valid else "  (not valid for this sweep)"
        ax.set_title(f"{name}: {rho}, n = {a.n}{flag}", fontsize=10)
        better = "lower" if report.modes[name] == "min" else "higher"
        ax.set_xlabel(f"{name} ({better} is better)")
        ax.set_ylabel(report.accuracy)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"selection_{name}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def _csv_columns(report, trials) -> tuple[list[str], list[str]]:
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    metrics = sorted({k for t in trials for k in t.metrics})
    return params, metrics


def _picked_by(report, trial_id: str) -> list[str]:
    return [name for name in report.criteria if report.picks[name] == trial_id]


def write_csv(report, trials, path: str | Path) -> Path:
    """One row per trial: id, status, effective λ, the searched params, every metric, every
    criterion value (``criterion/<name>``) and the criteria that picked it (``picked_by``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params, metrics = _csv_columns(report, trials)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "lam", *params, *metrics, *(f"criterion/{c}" for c in report.criteria), "picked_by"])
        for t in trials:
            writer.writerow([
                t.trial_id,
                t.status,
                _csv_value(report.lams.get(t.trial_id)),
                *(_csv_value(t.params.get(k)) for k in params),
                *(_csv_value(t.metrics.get(k)) for k in metrics),
                *(_csv_value(report.values[c].get(t.trial_id)) for c in report.criteria),
                " ".join(_picked_by(report, t.trial_id)),
            ])
    return path


def _csv_value(value: Any) -> Any:
    """Empty for missing or NaN (a spreadsheet reads them as blanks), else the value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.default td { font-weight: bold; } tr.invalid td { color: #a33; }
tr.pick td { background: #eef6ee; }
.plots img { max-width: 48%; margin: 0.5em 1% 0.5em 0; border: 1px solid #ddd; }
.note { color: #555; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = (), left: int = 1) -> str:
    esc = html.escape
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(f'<td class="l">{esc(_cell(v))}</td>' if i < left else f"<td>{esc(_cell(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_html(report, trials, plots: Sequence[str | Path], path: str | Path) -> Path:
    """A self-contained HTML page (inline style, no scripts): the selection table, the default
    criterion and why, the plots (``<img>`` by path relative to the page) and every trial."""
    esc = html.escape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sel_rows = _selection_rows(report)
    sel_classes = [
        " ".join(c for c in ("default" if n == report.default else "", "" if report.validity[n].valid else "invalid") if c)
        for n in report.criteria
    ]
    params, _ = _csv_columns(report, trials)
    metrics = ["train/loss", report.accuracy, *(m for m in ("eval/knn_acc", "eval/rankme", "yardstick/loss") if m != report.accuracy)]
    trial_header = ["trial", "status", "λ", *params, *metrics, *report.criteria, "picked by"]
    trial_rows, trial_classes = [], []
    for t in trials:
        picked = _picked_by(report, t.trial_id)
        trial_rows.append([
            t.trial_id,
            t.status,
            report.lams.get(t.trial_id),
            *(t.params.get(k) for k in params),
            *(t.metrics.get(m) for m in metrics),
            *(report.values[c].get(t.trial_id) for c in report.criteria),
            ", ".join(picked),
        ])
        trial_classes.append("pick" if report.default in picked else "")
    notes = [
        f"<p><b>Default criterion: {esc(report.default)}</b> &rarr; trial {esc(report.picks[report.default] or '(none)')}"
        f" (bold row). Why: {esc(report.reason)}.</p>"
    ]
    notes += [f'<p class="note">{esc(note[0].upper() + note[1:])}.</p>' for note in _notes(report)]
    images = "".join(
        f'<img src="{esc(Path(os.path.relpath(Path(p), path.parent)).as_posix())}" alt="{esc(Path(p).stem)}">' for p in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{esc(report.sweep)}: label-free selection</title><style>{_STYLE}</style></head>
<body>
<h1>{esc(report.sweep)}: label-free selection</h1>
<p class="note">Each criterion ranks the trials without labels; {esc(report.accuracy)} is used only to judge it.
Spearman &rho; and Kendall &tau; are oriented so that positive means a better criterion value goes with a
higher accuracy; regret is the accuracy lost by the criterion's pick; top3 the overlap of the top-3 sets.</p>
{_html_table([h.strip() for h in SELECTION_HEADER], [[name, *r[1:]] for name, r in zip(report.criteria, sel_rows)], sel_classes)}
{''.join(notes)}
<h2>Criterion against accuracy</h2>
<div class="plots">{images or '<p class="note">No completed trial with a finite criterion and accuracy.</p>'}</div>
<h2>Trials</h2>
{_html_table(trial_header, trial_rows, trial_classes, left=2)}
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# A whole sweep: trials, yardstick (cached per trial), criteria, files.


@dataclass(frozen=True)
class SweepAnalysis:
    sweep_dir: Path
    spec: Any
    trials: tuple  # TrialRecords, with the yardstick merged in
    selection: Any  # selection.SelectionReport


def load_sweep(sweep_dir: str | Path):
    """``(spec, trials)`` of a sweep directory written by ``lejepa-tune run``."""
    from .search_space import sweep_spec_from_dict
    from .sweep import TRIALS_CSV, load_trials_csv

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "spec.yaml").is_file() or not (sweep_dir / TRIALS_CSV).is_file():
        raise FileNotFoundError(f"{sweep_dir}: not a finished sweep directory (no spec.yaml or {TRIALS_CSV})")
    spec = sweep_spec_from_dict(yaml.safe_load((sweep_dir / "spec.yaml").read_text()), str(sweep_dir / "spec.yaml"))
    return spec, load_trials_csv(sweep_dir / TRIALS_CSV)


def analyse_sweep(sweep_dir: str | Path, spec=None, trials=None, n_boot: int = 1000) -> SweepAnalysis:
    """Measures the fixed-yardstick loss of every completed trial (once: it is cached in
    ``trials/<id>/yardstick.json``) and evaluates every criterion against the probe."""
    from .selection import evaluate_criteria, merge_metrics
    from .yardstick import yardstick_for_sweep

    sweep_dir = Path(sweep_dir)
    if spec is None or trials is None:
        spec, trials = load_sweep(sweep_dir)
    cached: dict[str, dict[str, float]] = {}
    missing = []
    for t in trials:
        path = sweep_dir / "trials" / t.trial_id / "yardstick.json"
        if path.is_file():
            cached[t.trial_id] = json.loads(path.read_text())
        elif t.status == "completed":
            missing.append(t)
    if missing:
        for trial_id, values in yardstick_for_sweep(sweep_dir, missing, spec).items():
            cached[trial_id] = values
            (sweep_dir / "trials" / trial_id / "yardstick.json").write_text(json.dumps(values))
    trials = tuple(merge_metrics(trials, cached))
    return SweepAnalysis(sweep_dir, spec, trials, evaluate_criteria(trials, spec, n_boot=n_boot))


def write_report(analysis: SweepAnalysis, out_dir: str | Path) -> dict[str, Path]:
    """Plots (PNG), ``trials.csv`` with every criterion, and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(analysis.selection, analysis.trials, out_dir)
    csv_path = write_csv(analysis.selection, analysis.trials, out_dir / "selection_trials.csv")
    html = write_html(analysis.selection, analysis.trials, [p.name for p in plots], out_dir / "report.html")
    return {"html": html, "csv": csv_path, **{p.stem: p for p in plots}}
