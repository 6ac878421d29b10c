"""Rendering a drift run for people: a terminal table, a JSON document and an HTML page.

Imports only the result types (``monitoring.drift.results``): rendering never computes a
verdict. The HTML report is one self-contained file (plots are inline base64 PNGs) that opens from a
CI artefact or an e-mail: the verdict first, then a table with drifted features highlighted,
then one plot per feature comparing the reference with the current data.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from churn.profile import CategoricalSummary, NumericSummary
from monitoring.drift.results import DriftReport, DriftRun
from monitoring.performance.results import PerformanceReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_ECDF_POINTS = 512
_HIST_BINS = 40


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return "<1e-300" if value == 0 else format(value, ".2g")


def _missing(report: DriftReport) -> str:
    ref, cur = report.missing_rate_reference, report.missing_rate_current
    text = f"{_fmt(ref * 100, '.1f')}→{_fmt(cur * 100, '.1f')}%"
    return text + (" !" if report.missing_rate_drifted else "")


def _row(report: DriftReport) -> list[str]:
    return [
        report.feature,
        report.kind,
        report.test_used,
        _fmt(report.statistic),
        _p(report.p_value),
        _p(report.p_value_corrected),
        f"{_fmt(report.effect_size)} {report.effect_size_name} (≥{report.effect_threshold:g})",
        _fmt(report.psi),
        _missing(report),
        report.status.upper() if report.drifted else report.status,
    ]


_HEADER = [
    "feature",
    "kind",
    "test",
    "statistic",
    "p",
    "p adj",
    "effect size",
    "PSI",
    "missing",
    "status",
]


def render_terminal(run: DriftRun) -> str:
    """A plain-text table (no colour codes, so it reads the same in a log file)."""
    reports = run.reports
    rows = [_HEADER] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(run.summary_line())
    for report in reports:
        lines.extend(f"  {report.feature}: {note}" for note in report.notes)
    if run.live is not None:
        lines.append(_live_line(run))
    if run.performance is not None:
        lines.extend(_performance_lines(run.performance))
    return "\n".join(lines)


def _band(low: float, high: float) -> str:
    return f"[{_fmt(low, '.3f')}, {_fmt(high, '.3f')}]"


def _performance_lines(perf: PerformanceReport) -> list[str]:
    """Estimated metrics (with their band and, where labelled, the realised value) and the
    segments the calibration test flagged."""
    est = perf.estimate
    lines = [
        "",
        f"estimated performance without labels ({est.rows:,} predictions, calibration "
        f"{perf.calibration_method}, decision threshold {est.threshold:g}):",
    ]
    realised = {m.name: m for m in est.reconciled}
    for m in est.metrics:
        line = f"  {m.name:<11} {_fmt(m.estimate, '.3f')}  band {_band(m.low, m.high)}"
        r = realised.get(m.name)
        if r is not None and r.realised is not None:
            mark = "  OUTSIDE ITS BAND" if r.flagged else ""
            line += (
                f"  | {est.labelled:,} labelled: estimated {_fmt(r.estimate, '.3f')}, "
                f"realised {_fmt(r.realised, '.3f')}{mark}"
            )
        lines.append(line)
    if perf.estimated_auc_below_gate:
        lines.append(f"  ESTIMATED AUC BELOW THE GATE ({perf.gate_auc:g})")
    if est.concept_shift:
        lines.append(
            "  CONCEPT SHIFT: realised " + ", ".join(est.flagged_metrics) + " left the band"
        )
    flagged = perf.segments.flagged
    lines.append(
        f"segments: {perf.segments.tested} tested at alpha {perf.segments.alpha:g}; "
        + (
            "; ".join(f"{s.name} {s.verdict.replace('_', '-')}" for s in flagged)
            if flagged
            else "none mis-calibrated"
        )
    )
    return lines


def _live_line(run: DriftRun) -> str:
    live = run.live
    assert live is not None
    metrics = f"AUC {_fmt(live.auc)}, precision {_fmt(live.precision)}, recall {_fmt(live.recall)}"
    extra = f" ({'; '.join(live.notes)})" if live.notes else ""
    return f"live quality on {live.labelled_samples} labelled rows: {metrics}{extra}"


# --------------------------------------------------------------------------- plots


def _figure_to_img(fig: Figure, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def numeric_plot(name: str, reference: np.ndarray, current: np.ndarray) -> str:
    """Overlaid density histograms and the two ECDFs, as an inline PNG tag."""
    import matplotlib.pyplot as plt

    ref, cur = _finite(reference), _finite(current)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
    both = np.concatenate([ref, cur])
    if both.size:
        low, high = np.quantile(both, [0.005, 0.995])
        bins = np.linspace(low, high if high > low else low + 1, _HIST_BINS + 1)
        grid = np.linspace(both.min(), both.max(), _ECDF_POINTS)
        for values, label, colour in ((ref, "reference", "#4c72b0"), (cur, "current", "#dd8452")):
            if values.size:  # an empty side has no density (and no curve) to draw
                left.hist(values, bins=bins, density=True, alpha=0.5, label=label, color=colour)
                ecdf = np.searchsorted(np.sort(values), grid, side="right") / values.size
                right.step(grid, ecdf, where="post", label=label, color=colour)
    left.set_title(f"{name}: histogram (density)", fontsize=9)
    right.set_title(f"{name}: empirical CDF", fontsize=9)
    left.legend(fontsize=8)
    right.legend(fontsize=8, loc="lower right")
    return _figure_to_img(fig, f"{name}: reference vs current distribution")


def categorical_plot(name: str, reference: CategoricalSummary, current: CategoricalSummary) -> str:
    """Side-by-side bars of each category's share, unseen categories marked with '*'."""
    import matplotlib.pyplot as plt

    categories = list(reference.counts) + [c for c in current.counts if c not in reference.counts]
    ref_total, cur_total = max(reference.n, 1), max(current.n, 1)
    ref_share = [reference.counts.get(c, 0) / ref_total for c in categories]
    cur_share = [current.counts.get(c, 0) / cur_total for c in categories]
    labels = [c if c in reference.counts else f"{c} *" for c in categories]
    x = np.arange(len(categories))
    fig, ax = plt.subplots(figsize=(9, 2.8))
    ax.bar(x - 0.2, ref_share, width=0.4, label="reference", color="#4c72b0")
    ax.bar(x + 0.2, cur_share, width=0.4, label="current", color="#dd8452")
    ax.set_xticks(x, labels, fontsize=8, rotation=15)
    ax.set_ylabel("share")
    ax.set_title(f"{name}: share per category (* = not in reference)", fontsize=9)
    ax.legend(fontsize=8)
    return _figure_to_img(fig, f"{name}: category shares, reference vs current")


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
.verdict{padding:.8em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.drift{background:#fde2e1;border:1px solid #d9534f}.ok{background:#e3f4e1;border:1px solid #5cb85c}
.insufficient_data{background:#fff4d6}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
tr.drift td{background:#fde2e1;font-weight:600}tr.insufficient_data td{background:#fff4d6}
section{margin:1.5em 0;padding-top:.5em;border-top:1px solid #ddd}
section.drift h3{color:#b52b27}.notes{color:#555;font-size:.9em}dt{font-weight:600}
"""


def _table(reports: Sequence[DriftReport]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = "".join(
        f'<tr class="{r.status}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in _row(r))
        + "</tr>"
        for r in reports
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_facts(run: DriftRun) -> str:
    facts: list[tuple[str, str]] = [
        ("Reference", run.reference_label),
        ("Current", f"{run.current_label} ({run.current_rows:,} rows)"),
        (
            "Test level",
            f"alpha {run.alpha:g}, correction {run.correction}, min rows {run.min_rows}",
        ),
        ("Generated", run.finished_at.isoformat(timespec="seconds")),
    ]
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    return f"<dl>{items}</dl>"


def _live_html(run: DriftRun) -> str:
    if run.live is None:
        return ""
    return f"<h2>Live quality</h2><p>{html.escape(_live_line(run))}</p>"


def _segment_plot(perf: PerformanceReport) -> str:
    """Predicted vs observed churn rate per segment (observed only where labelled)."""
    import matplotlib.pyplot as plt

    rows = [s for s in perf.segments.segments if s.rows]
    if not rows:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [s.estimated_churn_rate for s in rows], 0.4, label="predicted")
    observed = [s.realised_churn_rate if s.realised_churn_rate is not None else 0 for s in rows]
    colours = [
        "tab:red"
        if s.verdict == "under_predicted"
        else "tab:orange"
        if s.verdict == "over_predicted"
        else "tab:green"
        for s in rows
    ]
    ax.barh(y + 0.2, observed, 0.4, color=colours, label="observed (labelled)")
    ax.set_yticks(y, [s.name for s in rows])
    ax.invert_yaxis()
    ax.set_xlabel("churn rate")
    ax.legend(loc="lower right")
    return _figure_to_img(fig, "predicted and observed churn rate per segment")


def _performance_html(run: DriftRun) -> str:
    perf = run.performance
    if perf is None:
        return ""
    est = perf.estimate
    realised = {m.name: m for m in est.reconciled}
    metric_rows = "".join(
        "<tr>"
        f"<td>{m.name}</td><td>{_fmt(m.estimate, '.3f')}</td><td>{_band(m.low, m.high)}</td>"
        f"<td>{_fmt(realised[m.name].realised, '.3f') if m.name in realised else '—'}</td>"
        f"<td>{'OUTSIDE' if m.name in realised and realised[m.name].flagged else ''}</td></tr>"
        for m in est.metrics
    )
    segment_rows = "".join(
        f'<tr class="{"drift" if s.verdict in ("under_predicted", "over_predicted") else ""}">'
        f"<td>{html.escape(s.name)}</td><td>{s.rows:,}</td><td>{s.labelled:,}</td>"
        f"<td>{_fmt(s.mean_probability, '.3f')}</td><td>{_fmt(s.estimated_churn_rate, '.3f')}</td>"
        f"<td>{_fmt(s.realised_churn_rate, '.3f')}</td><td>{_fmt(s.estimated_auc, '.3f')}</td>"
        f"<td>{_fmt(s.realised_auc, '.3f')}</td><td>{_fmt(s.p_value)}</td>"
        f"<td>{s.verdict.replace('_', ' ')}</td></tr>"
        for s in perf.segments.segments
    )
    head = (
        "<tr><th>segment</th><th>rows</th><th>labelled</th><th>mean p</th>"
        "<th>est. churn</th><th>obs. churn</th><th>est. AUC</th><th>obs. AUC</th>"
        "<th>p</th><th>verdict</th></tr>"
    )
    summary = "\n".join(_performance_lines(perf)[1:])
    return (
        "<h2>Estimated performance (no labels needed)</h2>"
        f"<pre>{html.escape(summary)}</pre>"
        "<table><thead><tr><th>metric</th><th>estimate</th><th>band</th>"
        "<th>realised (labelled)</th><th></th></tr></thead>"
        f"<tbody>{metric_rows}</tbody></table>"
        f"<h2>Segments</h2><table><thead>{head}</thead><tbody>{segment_rows}</tbody></table>"
        f"{_segment_plot(perf)}"
    )


def _feature_section(report: DriftReport, plot: str) -> str:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    title = f"{report.feature} — {report.status.replace('_', ' ')}"
    return (
        f'<section class="{report.status}"><h3>{html.escape(title)}</h3>{plot}'
        f'<ul class="notes">{notes}</ul></section>'
    )


def _plot_for(report: DriftReport, run: DriftRun, current: pd.DataFrame) -> str:
    profile = run.reference
    if report.kind == "categorical":
        return categorical_plot(
            report.feature,
            profile.categorical[report.feature],
            CategoricalSummary.from_values(current[report.feature]),
        )
    if report.kind == "prediction":
        ref: NumericSummary | None = profile.predictions
        column = run.prediction_column
    else:
        ref, column = profile.numeric[report.feature], report.feature
    if ref is None or column not in current:
        return ""
    return numeric_plot(report.feature, ref.values, current[column].to_numpy(dtype=float))


def render_html(run: DriftRun, current: pd.DataFrame) -> str:
    """The whole report page: verdict, facts, table, live quality, a plot per feature."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    reports = run.reports
    verdict_class = {"drift": "drift", "no_drift": "ok", "insufficient_data": "insufficient_data"}[
        run.verdict
    ]
    sections = "".join(_feature_section(r, _plot_for(r, run, current)) for r in reports)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Drift report — {html.escape(run.current_label)}</title>"
        f"<style>{_CSS}</style></head><body><h1>Drift report</h1>"
        f'<p class="verdict {verdict_class}">{html.escape(run.summary_line())}</p>'
        f"{_run_facts(run)}{_table(reports)}{_live_html(run)}{_performance_html(run)}"
        f"<h2>Per feature</h2>{sections}"
        f"<h2>Method</h2><p class=notes>{html.escape(METHOD_NOTE)}</p></body></html>"
    )


METHOD_NOTE = (
    "Numeric features: two-sample Kolmogorov–Smirnov test; effect size is the Wasserstein "
    "distance divided by the reference standard deviation; PSI on reference decile bins is "
    "shown for comparison. Categorical features: chi-squared homogeneity test on the 2×K "
    "table of counts (categories unseen in the reference are columns of their own); effect "
    "size is the Jensen–Shannon distance (base 2). p adj is corrected across features. A "
    "feature is drifted when p adj < alpha and the effect size reaches its threshold, or when "
    "its missing rate moved significantly by at least the threshold (marked !)."
)


def report_json(run: DriftRun) -> dict[str, Any]:
    """Everything in the run, JSON-ready (NaN as null)."""
    return run.to_dict()
