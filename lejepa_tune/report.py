"""Rendering an analysed sweep: terminal tables, plots, CSV and one self-contained HTML page.

Nothing here computes a statistic: it shows a :class:`~lejepa_tune.analysis.SweepAnalysis`.
The HTML page embeds its images (``data:`` URIs), so it works opened from disk, from MLflow's
artifact view, or mailed to a colleague.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

from .analysis import SweepAnalysis, agreement_rows
from .metrics import LINEAR_ACC, REFERENCE_ACC
from .records import SweepRecords, TrialRecord, short_name, trial_label
from .search_space import Distribution

__all__ = [
    "format_table",
    "format_trials_table",
    "ranked_trials",
    "format_selection",
    "correlation",
    "regret_points",
    "plot_pngs",
    "best_completed_so_far",
    "write_trials_csv",
    "write_html",
    "write_report",
]

# The criteria drawn against the reference (the others are in the table and the CSV).
PLOTTED = ("objective", "loss", "scaled_loss", "backbone/gmi", "backbone/lidar", "backbone/rankme", "backbone/inv_ratio", "backbone/view_nn")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
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


def ranked_trials(analysis: SweepAnalysis) -> list[TrialRecord]:
    """The sweep's trials, best value of the choice's criterion first, then the completed trials
    without one, then the others."""
    sel = analysis.selection
    mode, values = sel.modes[sel.default], sel.values[sel.default]

    def key(t: TrialRecord):
        v = values.get(t.trial_id, math.nan)
        return (t.status != "completed", math.isnan(v), -v if mode == "max" else v)

    return sorted(analysis.records.trials, key=key)


def format_trials_table(analysis: SweepAnalysis) -> str:
    """One row per trial, best objective first: id, status, the searched values, the
    objective, and the labelled reference (for judging only); the choice is starred (``*``),
    its near-ties marked ``~``."""
    records, sel = analysis.records, analysis.selection
    crit = sel.default
    values = sel.values[crit]
    searched = records.searched
    rows = [
        [("* " if t.trial_id == sel.choice else "~ " if t.trial_id in sel.near_ties else "  ") + t.trial_id, t.status,
         *(t.params.get(k) for k in searched), values.get(t.trial_id), t.metrics.get(REFERENCE_ACC)]
        for t in ranked_trials(analysis)
    ]
    return format_table(["  trial", "status", *(short_name(k) for k in searched), crit, f"{REFERENCE_ACC} (labels)"], rows)


def _ci(lo: float, hi: float) -> str:
    return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def correlation(value: float | None) -> str:
    """A rank correlation (ρ, τ, a top-3 overlap, the noise ceiling) as a person reads it: to
    two decimals, as its 95 % interval beside it; the CSV files and MLflow keep every digit."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _rho_with_ci(agreement) -> str:
    """``Spearman ρ = 0.88 [0.40, 1.00]``, or why there is none (too few trials, ties)."""
    if not math.isfinite(agreement.spearman):
        return f"Spearman ρ undefined ({agreement.n} trials)"
    return f"Spearman ρ = {correlation(agreement.spearman)} {_ci(*agreement.spearman_ci)}"


def regret_points(regret: float | None) -> str:
    """A regret (accuracy lost, a fraction) in points of accuracy, as a person reads it: 0.0083
    is 0.8 points. The terminal, the page and the MLflow description show it so; the CSV files
    and MLflow's metrics keep the fraction."""
    return "-" if regret is None or not math.isfinite(regret) else f"{100 * regret:.1f}"


def format_selection(analysis: SweepAnalysis) -> str:
    """The terminal summary: every criterion's agreement with the reference, the noise
    ceiling, the choice and why, and the warnings."""
    sel = analysis.selection
    rows = [
        [("* " if r["criterion"] == sel.default else "  ") + r["criterion"], r["mode"], r["valid"], r["n"], correlation(r["spearman"]),
         _ci(r["spearman_lo"], r["spearman_hi"]), correlation(r["kendall"]), correlation(r["within_spearman"]), regret_points(r["regret"]),
         correlation(r["top3_overlap"]), r["pick"] or "-"]
        for r in agreement_rows(sel)
    ]
    header = ["  criterion", "mode", "valid", "n", "spearman", "95% CI", "kendall", "within", "regret (points)", "top3", "pick"]
    lines = [
        f"Label-free selection for sweep '{sel.sweep}': criteria judged against {sel.reference} (labels, for judging only);",
        "ρ > 0: a better criterion value goes with a higher accuracy; within: ρ inside groups of equal batch size and views.",
        "",
        format_table(header, rows),
        "",
        f"noise ceiling (the ρ a perfect criterion would reach against this reference): {correlation(sel.noise_ceiling)}",
        f"choice: {sel.choice or '(none)'} by {sel.default} ({sel.reason})",
    ]
    if sel.best_by_reference is not None:
        lines.append(f"best by {sel.reference} (labels, for reference only): {sel.best_by_reference}")
    lines += [f"warning: {w}" for w in analysis.warnings]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots: matplotlib figures rendered to PNG bytes (no pyplot, no global state).


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _completed(records: SweepRecords) -> list[TrialRecord]:
    return [t for t in records.trials if t.status == "completed" and math.isfinite(t.metrics.get(REFERENCE_ACC, math.nan))]


def _lam(t: TrialRecord, records: SweepRecords) -> float:
    value = t.params.get("loss.lam", records.spec.get("base", {}).get("loss", {}).get("lam", math.nan))
    return float(value)


def plot_pngs(analysis: SweepAnalysis) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by name (those that have something to show)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records, sel = analysis.records, analysis.selection
    done = _completed(records)
    out: dict[str, bytes] = {}
    if not done:
        return out
    acc = [t.metrics[REFERENCE_ACC] for t in done]
    lams = [_lam(t, records) for t in done]
    positive = [v for v in lams if math.isfinite(v) and v > 0]
    norm = LogNorm(min(positive) / (1.5 if min(positive) == max(positive) else 1), max(positive) * (1.5 if min(positive) == max(positive) else 1)) if positive else None

    # Each plotted criterion against the reference, one panel each, coloured by λ.
    names = [n for n in PLOTTED if n in sel.criteria]
    cols = 4
    fig = Figure(figsize=(4.0 * cols, 3.4 * math.ceil(len(names) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(names) / cols), cols, squeeze=False).ravel()
    points = None
    for ax, name in zip(axes, names):
        xs = [sel.values[name].get(t.trial_id, math.nan) for t in done]
        colours = [v if math.isfinite(v) and v > 0 else math.nan for v in lams]
        points = ax.scatter(xs, acc, c=colours if norm else "tab:blue", cmap="viridis", norm=norm, s=28, zorder=2)
        pick = sel.picks[name]
        for t, x, y in zip(done, xs, acc):
            if t.trial_id == pick:
                ax.scatter([x], [y], s=180, facecolors="none", edgecolors="red", linewidths=1.8, zorder=3)
        a = sel.agreements[name]
        valid = "" if sel.validity[name].valid else " (not valid here)"
        rho = correlation(a.spearman) if math.isfinite(a.spearman) else "undefined"
        ax.set_title(f"{name}: ρ = {rho}{valid}", fontsize=9)
        ax.set_xlabel(f"{name} ({'lower' if sel.modes[name] == 'min' else 'higher'} is better)", fontsize=8)
        ax.set_ylabel(REFERENCE_ACC, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if norm is not None and points is not None:
        fig.colorbar(points, ax=axes[: len(names)].tolist(), label="λ (loss.lam)", shrink=0.8)
    out["criteria"] = _png(fig)

    # Accuracy against λ, log axis, coloured by the objective.
    if len(positive) >= 2 and len(set(positive)) > 1:
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        objective = [sel.values[sel.default].get(t.trial_id, math.nan) for t in done]
        sc = ax.scatter(lams, acc, c=objective, cmap="plasma", s=36, zorder=2)
        fig.colorbar(sc, ax=ax, label=f"{sel.default} ({'higher' if sel.modes[sel.default] == 'max' else 'lower'} is better)")
        for t, x, y in zip(done, lams, acc):
            if t.trial_id == sel.choice:
                ax.scatter([x], [y], s=220, facecolors="none", edgecolors="red", linewidths=2, zorder=3, label="label-free choice")
        ax.set_xscale("log")
        ax.set_xlabel("λ (loss.lam, log scale)")
        ax.set_ylabel(REFERENCE_ACC)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title("Accuracy against λ", fontsize=10)
        out["accuracy_vs_lambda"] = _png(fig)

    # The search over time: the objective of each trial in the order Tune started them.
    crit = sel.default
    series = [(i, sel.values[crit].get(t.trial_id, math.nan), t.status) for i, t in enumerate(records.trials, start=1)]
    if any(math.isfinite(v) for _, v, _ in series):
        fig = Figure(figsize=(6.4, 3.6), layout="constrained")
        ax = fig.add_subplot()
        colour = {"completed": "tab:blue", "stopped": "tab:orange", "interrupted": "tab:gray", "error": "tab:red"}
        for status in colour:
            pts = [(i, v) for i, v, s in series if s == status and math.isfinite(v)]
            if pts:
                ax.scatter(*zip(*pts), color=colour[status], s=30, label=status, zorder=2)
        ax.step(*zip(*best_completed_so_far(series, sel.modes[crit])), where="post", color="black", alpha=0.6, label="best completed so far")
        ax.set_xlabel("trial (in the order the search proposed them)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted: 1, 2, ..., never 0.5
        ax.set_ylabel(crit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("The search over time", fontsize=10)
        out["search_over_time"] = _png(fig)
    importance = _importance(analysis)
    if importance:
        fig = Figure(figsize=(6.4, max(2.4, 0.6 + 0.5 * len(importance))), layout="constrained")
        ax = fig.add_subplot()
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set_xlabel(f"importance for {sel.default} (Optuna's fANOVA; sums to 1)")
        ax.grid(True, axis="x", alpha=0.3)
        out["importance"] = _png(fig)
    parallel = _parallel(analysis, done)
    if parallel is not None:
        out["parallel"] = parallel
    return out


def best_completed_so_far(series: list[tuple[int, float, str]], mode: str) -> list[tuple[int, float]]:
    """``(i, best)`` for every ``(i, value, status)`` in the order of the search: the best value
    of the completed trials up to ``i`` (NaN before the first). Only completed trials count, as
    for the choice: a stopped trial's value is from an earlier epoch than the others'."""
    best, running = [], math.nan
    for i, v, status in series:
        if status == "completed" and math.isfinite(v) and (not math.isfinite(running) or (v > running if mode == "max" else v < running)):
            running = v
        best.append((i, running))
    return best


def _search(records: SweepRecords) -> dict[str, Distribution]:
    return {k: Distribution(**{f: (tuple(v) if f == "values" else v) for f, v in d.items()}) for k, d in records.spec.get("search", {}).items()}


def _importance(analysis: SweepAnalysis) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each searched key for the criterion the choice uses,
    over the completed trials (an in-memory study rebuilt from the records)."""
    import optuna

    sel = analysis.selection
    search = {k: d for k, d in _search(analysis.records).items() if d.type != "choice" or all(isinstance(v, (int, float, str, bool)) for v in d.values)}
    done = [t for t in _completed(analysis.records) if math.isfinite(sel.values[sel.default].get(t.trial_id, math.nan))]
    if len(search) < 1 or len(done) < 3:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sel.modes[sel.default] == "max" else "minimize")
    dists = {k: d.to_optuna() for k, d in search.items()}
    for t in done:
        study.add_trial(optuna.trial.create_trial(params={k: t.params[k] for k in search}, distributions=dists, value=sel.values[sel.default][t.trial_id]))
    try:
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # every trial alike in every searched value
        return None


def _parallel(analysis: SweepAnalysis, done: list[TrialRecord]) -> bytes | None:
    """Parallel coordinates: one line per completed trial across its searched values (log axes
    where the search was log-uniform), the criterion and the reference accuracy."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    sel = analysis.selection
    search = _search(analysis.records)
    axes = [k for k, d in search.items() if d.type != "choice" or all(isinstance(v, (int, float)) for v in d.values)]
    if not axes or len(done) < 2:
        return None
    columns = [*axes, sel.default, REFERENCE_ACC]

    def value(t: TrialRecord, key: str) -> float:
        if key == sel.default:
            return sel.values[key].get(t.trial_id, math.nan)
        v = float(t.metrics[key]) if key == REFERENCE_ACC else float(t.params[key])
        return math.log10(v) if key in search and search[key].type == "loguniform" and v > 0 else v

    table = [[value(t, k) for k in columns] for t in done]
    lo = [min(r[i] for r in table) for i in range(len(columns))]
    hi = [max(r[i] for r in table) for i in range(len(columns))]
    acc = [r[-1] for r in table]
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(max(6.4, 1.6 * len(columns)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for t, row in sorted(zip(done, table), key=lambda p: p[1][-1]):
        ys = [(v - a) / (b - a) if b > a else 0.5 for v, a, b in zip(row, lo, hi)]
        chosen = t.trial_id == sel.choice
        colour = "red" if chosen else cmap((row[-1] - min(acc)) / ((max(acc) - min(acc)) or 1))
        ax.plot(range(len(columns)), ys, color=colour, linewidth=2.5 if chosen else 1.2, alpha=1 if chosen else 0.8, zorder=3 if chosen else 2)
    ax.set_xticks(range(len(columns)), [f"log10 {short_name(k)}" if k in search and search[k].type == "loguniform" else short_name(k) for k in columns], fontsize=8)
    for i, (a, b) in enumerate(zip(lo, hi)):
        ax.annotate(f"{b:.3g}", (i, 1.0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        ax.annotate(f"{a:.3g}", (i, 0.0), textcoords="offset points", xytext=(0, -11), ha="center", fontsize=7)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.grid(True, axis="x", alpha=0.4)
    ax.set_title("Searched values, criterion and reference accuracy (colour: reference accuracy; red: the choice)", fontsize=9)
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# Files.


def write_trials_csv(analysis: SweepAnalysis, path: str | Path) -> Path:
    """One row per trial: id, status, the searched values, every numeric metric and every
    criterion's value, and the criteria that picked it."""
    records, sel = analysis.records, analysis.selection
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    searched = records.searched
    metrics = sorted({k for t in records.trials for k in t.metrics})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", *searched, *metrics, *(f"criterion/{c}" for c in sel.criteria), "picked_by", "checkpoint"])
        for t in records.trials:
            writer.writerow([
                t.trial_id, t.status, *(t.params.get(k) for k in searched),
                *(_blank(t.metrics.get(k)) for k in metrics),
                *(_blank(sel.values[c].get(t.trial_id)) for c in sel.criteria),
                " ".join(c for c in sel.criteria if sel.picks[c] == t.trial_id),
                t.checkpoint or "",
            ])
    return path


def _blank(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.default td { font-weight: bold; } tr.invalid td { color: #a33; } tr.pick td { background: #eef6ee; }
tr.tie td { background: #fdf1dc; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #555; } .warn { color: #a33; font-weight: bold; }
.choice { background: #eef6ee; border: 1px solid #9c9; padding: 0.8em 1em; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = (), left: int = 1) -> str:
    esc = html.escape
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if r < len(classes) and classes[r] else ""
        cells = "".join(f'<td class="l">{esc(_cell(v))}</td>' if i < left else f"<td>{esc(_cell(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(name: str, png: bytes, alt: str) -> str:
    return f'<img id="{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def write_html(analysis: SweepAnalysis, path: str | Path, pngs: dict[str, bytes] | None = None) -> Path:
    """The report page, self-contained: inline style, images embedded, no scripts."""
    esc = html.escape
    records, sel = analysis.records, analysis.selection
    pngs = plot_pngs(analysis) if pngs is None else pngs
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    choice = next((t for t in records.trials if t.trial_id == sel.choice), None)
    if choice is not None:
        a = sel.agreements[sel.default]
        why = (f"<p><b>Chosen without labels: trial {esc(choice.trial_id)}</b> ({esc(trial_label(dict(choice.params)))}), "
               f"the best {esc(sel.default)} of the completed trials. Why {esc(sel.default)}: {esc(sel.reason)}.</p>"
               f"<p>Judged afterwards with labels: {_rho_with_ci(a)} against "
               f"{esc(sel.reference)} (noise ceiling {correlation(sel.noise_ceiling)}), regret {regret_points(a.regret)} points; "
               f"the best trial by labels is {esc(sel.best_by_reference or '-')}.</p>")
    else:
        why = "<p><b>Nothing was chosen</b>: no completed trial has a value of the criterion.</p>"
    warnings = "".join(f'<p class="warn">Warning: {esc(w)}.</p>' for w in analysis.warnings)
    rows = agreement_rows(sel)
    crit_rows = [[r["criterion"], r["mode"], r["valid"], r["n"], correlation(r["spearman"]), _ci(r["spearman_lo"], r["spearman_hi"]),
                  correlation(r["kendall"]), correlation(r["within_spearman"]), regret_points(r["regret"]), correlation(r["top3_overlap"]),
                  r["pick"] or "-"] for r in rows]
    crit_classes = [" ".join(c for c in ("default" if r["criterion"] == sel.default else "", "" if r["valid"] else "invalid") if c) for r in rows]
    searched = records.searched
    ranked = ranked_trials(analysis)
    trial_rows = [
        [t.trial_id, t.status, *(t.params.get(k) for k in searched), sel.values[sel.default].get(t.trial_id),
         t.metrics.get(REFERENCE_ACC), t.metrics.get(LINEAR_ACC), t.epochs]
        for t in ranked
    ]
    trial_classes = ["pick" if t.trial_id == sel.choice else "tie" if t.trial_id in sel.near_ties else "" for t in ranked]
    marks = "The choice is shaded green" + (", its near-ties amber: where a few labels can be had, probe them" if sel.near_ties else "")
    devices = sorted({t.device for t in records.trials if t.device})  # on a CPU, other kernels train other encoders
    trained = f" Trained on {'; '.join(devices)}." if devices else ""
    figures = {
        "criteria": "Each criterion against the reference accuracy (one point per completed trial, coloured by λ; the criterion's pick circled in red)",
        "accuracy_vs_lambda": "Reference accuracy against λ, on a log axis",
        "search_over_time": "The search over time: each trial's objective in the order it was proposed",
        "importance": "Parameter importance for the objective (Optuna's fANOVA)",
        "parallel": "Parallel coordinates: searched values, the objective and the reference accuracy",
    }
    images = "".join(f"<h3>{esc(title)}</h3>{_img(name, pngs[name], title)}" for name, title in figures.items() if name in pngs)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{esc(sel.sweep)}: label-free selection</title><style>{_STYLE}</style></head>
<body>
<h1>{esc(sel.sweep)}: label-free selection</h1>
<div class="choice">{why}</div>
{warnings}
<h2>Criteria against the reference</h2>
<p class="note">Each criterion ranks the trials without labels; {esc(sel.reference)} is used only to judge it.
ρ and τ are positive when a better criterion value goes with a higher accuracy; "within" is ρ inside groups of equal
batch size and views; regret is the accuracy lost by the criterion's pick, in points (one point: 1 % of the images). Noise ceiling: {correlation(sel.noise_ceiling)}.</p>
{_html_table(["criterion", "mode", "valid", "n", "spearman", "95% CI", "kendall", "within", "regret (points)", "top3", "pick"], crit_rows, crit_classes)}
{images}
<h2>Trials</h2>
<p class="note">{esc(records.summary())}, best {esc(sel.default)} first. {esc(marks)}.{esc(trained)}</p>
{_html_table(["trial", "status", *(short_name(k) for k in searched), sel.default, "reference acc", "linear acc", "epochs"], trial_rows, trial_classes, left=2)}
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_report(analysis: SweepAnalysis, out_dir: str | Path) -> dict[str, Path]:
    """``report.html`` (self-contained), ``trials.csv`` and ``criteria.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    criteria_csv = out_dir / "criteria.csv"
    rows = agreement_rows(analysis.selection)
    with open(criteria_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _blank(v) for k, v in r.items()} for r in rows)
    return {
        "html": write_html(analysis, out_dir / "report.html"),
        "trials_csv": write_trials_csv(analysis, out_dir / "trials.csv"),
        "criteria_csv": criteria_csv,
    }
