"""Rendering an evaluation for people (terminal, HTML) and machines (JSON). Rendering never
computes a verdict: it reads the result types only."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from monitoring.rollout.results import Evaluation, Evidence, PairedDifference


def _f(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _difference_row(d: PairedDifference) -> list[str]:
    return [
        d.metric,
        _f(d.champion),
        _f(d.challenger),
        _f(d.difference, "+.4f"),
        f"[{_f(d.lower, '+.4f')}, {_f(d.upper, '+.4f')}]",
        _f(d.p_value, ".3g"),
        d.method,
    ]


_DIFF_HEADER = ["metric", "champion", "challenger", "difference", "interval", "p", "method"]
_SEGMENT_HEADER = [
    "segment",
    "rows",
    "champion",
    "challenger",
    "labelled",
    "observed",
    "champion z",
    "challenger z",
]


def _tables(ev: Evidence) -> tuple[list[list[str]], list[list[str]]]:
    diffs = [_difference_row(d) for d in (ev.auc, ev.log_loss, ev.brier) if d is not None]
    segments = [
        [
            f"{s.feature}={s.segment}",
            f"{s.rows:,}",
            _f(s.champion_rate, ".3f"),
            _f(s.challenger_rate, ".3f"),
            f"{s.labelled:,}",
            _f(s.observed_rate, ".3f"),
            _f(s.champion_calibration_z, "+.2f"),
            _f(s.challenger_calibration_z, "+.2f"),
        ]
        for s in ev.segments
    ]
    return diffs, segments


def _plain(header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_terminal(evaluation: Evaluation) -> str:
    ev, decision = evaluation.evidence, evaluation.decision
    lines = [
        f"{ev.model_name}: challenger v{ev.challenger} ({ev.stage}) vs champion v{ev.champion}, "
        f"{ev.window}",
        f"pairs {ev.pairs:,} (champion answered {ev.shadow_pairs:,}, challenger answered "
        f"{ev.canary_pairs:,}), labelled {ev.labelled_pairs:,}",
    ]
    if ev.unpaired_batches:
        lines.append(f"  {ev.unpaired_batches:,} shadow batch(es) could not be paired row by row")
    if ev.agreement is not None:
        a = ev.agreement
        lines.append(
            f"agreement: decisions {a.decision_agreement:.1%}, risk tiers {a.tier_agreement:.1%};"
            f" score distance KS {a.ks_statistic:.3f}, mean |dp| {a.mean_abs_difference:.4f};"
            f" HIGH tier {a.champion_high_rate:.1%} -> {a.challenger_high_rate:.1%}"
        )
    diffs, segments = _tables(ev)
    if diffs:
        lines += ["", "paired differences (challenger - champion; lower loss is better):"]
        lines += _plain(_DIFF_HEADER, diffs)
    if segments:
        lines += ["", "per segment (mean predicted churn; calibration z = observed - predicted):"]
        lines += _plain(_SEGMENT_HEADER, segments)
    if ev.health is not None:
        lines.append("")
        for h in ev.health:
            lines.append(
                f"{h.role}: p95 {_f(h.p95_latency_ms, '.1f')} ms, error ratio "
                f"{_f(h.error_ratio, '.4f')}, requests {_f(h.requests, '.0f')}"
            )
    lines += ["", *(f"note: {n}" for n in ev.notes)]
    lines.append(f"decision: {decision.verdict.upper()}: {'; '.join(decision.reasons)}")
    if decision.labels_needed is not None and decision.verdict == "undecided":
        lines.append(f"labels still needed (estimate): about {decision.labels_needed:,}")
    return "\n".join(line for line in lines if line is not None)


def write_json(evaluation: Evaluation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(evaluation.to_dict(), indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(path)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_COLOURS = {"promote": "#1a7f37", "reject": "#cf222e", "undecided": "#9a6700"}


def render_html(evaluation: Evaluation) -> str:
    """One self-contained page: the verdict first, then the evidence tables."""
    ev, decision = evaluation.evidence, evaluation.decision
    diffs, segments = _tables(ev)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Rollout of {html.escape(ev.model_name)} v{html.escape(ev.challenger)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
        f"<h1 style='color:{_COLOURS[decision.verdict]}'>{decision.verdict.upper()}</h1>",
        f"<ul>{reasons}</ul>",
        f"<p>challenger v{html.escape(ev.challenger)} ({html.escape(ev.stage)}) vs champion "
        f"v{html.escape(ev.champion)}, {html.escape(ev.window)}: {ev.pairs:,} pairs, "
        f"{ev.labelled_pairs:,} labelled.</p>",
    ]
    if decision.labels_needed is not None and decision.verdict == "undecided":
        parts.append(f"<p>Labels still needed (estimate): about {decision.labels_needed:,}.</p>")
    if ev.agreement is not None:
        a = ev.agreement
        parts.append(
            f"<p>Decision agreement {a.decision_agreement:.1%}, risk-tier agreement "
            f"{a.tier_agreement:.1%}, KS distance {a.ks_statistic:.3f}.</p>"
        )
    if diffs:
        parts += ["<h2>Paired differences</h2>", _html_table(_DIFF_HEADER, diffs)]
    if segments:
        parts += ["<h2>Segments</h2>", _html_table(_SEGMENT_HEADER, segments)]
    if ev.health is not None:
        rows = [
            [h.role, _f(h.p95_latency_ms, ".1f"), _f(h.error_ratio), _f(h.requests, ".0f")]
            for h in ev.health
        ]
        parts += [
            "<h2>Health</h2>",
            _html_table(["role", "p95 ms", "error ratio", "requests"], rows),
        ]
    parts += [f"<p>{html.escape(n)}</p>" for n in ev.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(evaluation: Evaluation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(evaluation), encoding="utf-8")
    tmp.replace(path)
