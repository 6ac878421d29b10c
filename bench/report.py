"""Ratios, targets and the rendered report (bench/RESULTS.md and the throughput plot).

Everything here is computed from the results JSON, so the report can be re-rendered from a
committed ``latest.json`` with ``python -m bench.report bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = ("service", "mlflow", "blog", "ceiling")
PASS, SHORT, NA = "pass", "short", "n/a"
RPS, P99 = "predict_rps_service_over_", "predict_p99_service_over_"


def _servers(results: dict[str, Any]) -> dict[str, Any]:
    servers: dict[str, Any] = results.get("http", {}).get("servers", {})
    return servers


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Every headline figure against a baseline measured in the same run."""
    servers = _servers(results)
    ours = servers.get("service")
    out: dict[str, Any] = {}
    if ours:
        for name in ("ceiling", "mlflow", "blog"):
            peer = servers.get(name)
            if not peer:
                continue
            out[f"predict_rps_service_over_{name}"] = _div(
                ours["predict"]["rps"], peer["predict"]["rps"]
            )
            out[f"predict_p99_service_over_{name}"] = _div(
                ours["predict"]["latency_ms"]["p99"], peer["predict"]["latency_ms"]["p99"]
            )
            out[f"startup_service_over_{name}"] = _div(ours["startup_s"], peer["startup_s"])
            out[f"memory_service_over_{name}"] = _div(
                ours["memory"]["worker_mb"], peer["memory"]["worker_mb"]
            )
            ours_h, peer_h = ours.get("health_under_load"), peer.get("health_under_load")
            if ours_h and peer_h:
                out[f"health_p99_service_over_{name}"] = _div(
                    ours_h["health"]["latency_ms"]["p99"], peer_h["health"]["latency_ms"]["p99"]
                )
        mlflow_batch = (servers.get("mlflow") or {}).get("batch", {})
        for size, figures in (ours.get("batch") or {}).items():
            if size in mlflow_batch:
                out[f"batch_{size}_rows_per_s_service_over_mlflow"] = _div(
                    figures["rows_per_s"], mlflow_batch[size]["rows_per_s"]
                )
            served = served_backend(results)
            in_process = _get(results, "inprocess", "timings", served, size)
            if in_process:
                out[f"batch_{size}_rows_per_s_http_over_inprocess_{served}"] = _div(
                    figures["rows_per_s"], in_process["rows_per_s"]
                )
    explain = (ours or {}).get("explain")
    if explain:
        out["explain_1_row_p50_explained_over_plain"] = _div(
            explain["explained"]["latency_ms"]["p50"], explain["plain"]["latency_ms"]["p50"]
        )
        out["explain_1_row_p99_explained_over_plain"] = _div(
            explain["explained"]["latency_ms"]["p99"], explain["plain"]["latency_ms"]["p99"]
        )
        out[f"explain_batch_{explain['batch_rows']}_rows_per_s_plain_over_explained"] = _div(
            explain["batch_plain"]["rows_per_s"], explain["batch_explained"]["rows_per_s"]
        )
    out.update(_v2_ratios(ours))
    timings = results.get("inprocess", {}).get("timings", {})
    for backend in FAST_BACKENDS:
        for size, fast in timings.get(backend, {}).items():
            sklearn = timings.get("sklearn", {}).get(size)
            if sklearn:
                out[f"inprocess_{size}_sklearn_over_{backend}_time"] = _div(
                    sklearn["median_ms"], fast["median_ms"]
                )
    webhook = results.get("webhook")
    if webhook:
        out["alias_move_polling_over_webhook_time"] = _div(
            webhook["polling"]["median_s"], webhook["webhook"]["median_s"]
        )
    for size, forest in timings.get("forest", {}).items():
        onnx = timings.get("onnx", {}).get(size)
        if onnx:
            out[f"inprocess_{size}_onnx_over_forest_time"] = _div(
                onnx["median_ms"], forest["median_ms"]
            )
    return out


FAST_BACKENDS = ("forest", "onnx")


def _v2_ratios(ours: dict[str, Any] | None) -> dict[str, Any]:
    """The Open Inference Protocol against the JSON API on the same server, same run: one row
    per call against /predict (throughput, and server CPU per request: /predict's over V2's,
    so above 1 means V2 is cheaper), 1,000 rows per call against /predict/batch."""
    v2 = (ours or {}).get("v2") or {}
    out: dict[str, Any] = {}
    if not ours or not v2:
        return out
    single, predict = v2.get("1"), ours.get("predict")
    if single and predict:
        out["v2_1_rps_over_predict"] = _div(single["rps"], predict["rps"])
        out["v2_1_cpu_per_request_predict_over_v2"] = _div(
            predict.get("server_cpu_ms_per_request"), single.get("server_cpu_ms_per_request")
        )
    many, batch = v2.get("1000"), (ours.get("batch") or {}).get("1000")
    if many and batch:
        out["v2_1000_rows_per_s_over_batch"] = _div(many["rows_per_s"], batch["rows_per_s"])
        out["v2_1000_cpu_per_call_batch_over_v2"] = _div(
            batch.get("server_cpu_ms_per_request"), many.get("server_cpu_ms_per_request")
        )
    return out


def served_backend(results: dict[str, Any]) -> str:
    """The backend the service picks by default: the compiled forest when it was measured."""
    timings = _get(results, "inprocess", "timings") or {}
    return next((b for b in FAST_BACKENDS if b in timings), "onnx")


Check = Callable[[dict[str, Any]], tuple[float | None, str]]


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and a pass/short/n/a mark."""
    r = results.get("ratios") or ratios(results)
    ours_errors = [
        _get(results, "http", "servers", "service", "predict", "errors"),
        _get(results, "http", "servers", "service", "health_under_load", "predict", "errors"),
    ]
    errors = None if ours_errors[0] is None else sum(e or 0 for e in ours_errors)
    service = ("http", "servers", "service")
    rows = [
        ("/predict throughput ≥ 0.7 × ceiling", r.get(f"{RPS}ceiling"), ">=", 0.7, "×"),
        ("/predict throughput ≥ 40 × mlflow models serve", r.get(f"{RPS}mlflow"), ">=", 40.0, "×"),
        ("/predict p99 ≤ 2 × ceiling p99 (same load)", r.get(f"{P99}ceiling"), "<=", 2.0, "×"),
        ("/predict errors = 0", errors, "<=", 0, ""),
        (
            "/health p99 < 50 ms while /predict is saturated",
            _get(results, *service, "health_under_load", "health", "latency_ms", "p99"),
            "<",
            50.0,
            " ms",
        ),
        (
            "/predict/batch ≥ 100,000 rows/s at 1,000 rows per call",
            _get(results, *service, "batch", "1000", "rows_per_s"),
            ">=",
            100_000.0,
            " rows/s",
        ),
        (
            "V2 infer ≥ 250,000 rows/s at 1,000 rows per call",
            _get(results, *service, "v2", "1000", "rows_per_s"),
            ">=",
            250_000.0,
            " rows/s",
        ),
        (
            "V2 infer, one row per call: throughput ≥ 0.8 × /predict",
            r.get("v2_1_rps_over_predict"),
            ">=",
            0.8,
            "×",
        ),
        (
            "prediction log: no record dropped (all loads, as deployed)",
            _get(results, *service, "prediction_log", "dropped"),
            "<=",
            0,
            "",
        ),
        (
            "one-row /predict?explain=true p99 < 20 ms (light load)",
            _get(results, *service, "explain", "explained", "latency_ms", "p99"),
            "<",
            20.0,
            " ms",
        ),
        (
            "drift check 1,000,000 × 7 < 10 s",
            _get(results, "drift", "1000000", "check_s"),
            "<",
            10.0,
            " s",
        ),
        (
            "estimated performance + segments, 1,000,000 predictions < 5 s",
            _get(results, "performance", "1000000", "total_s"),
            "<",
            5.0,
            " s",
        ),
        (
            "rollout evidence (DeLong, losses, agreement, 16 segments), 1,000,000 pairs < 5 s",
            _get(results, "rollout_evaluation", "1000000", "evidence_s"),
            "<",
            5.0,
            " s",
        ),
        (
            "paired bootstrap, 2,000 resamples of 10,000 pairs < 5 s",
            _get(results, "rollout_evaluation", "bootstrap", "seconds")
            if _get(results, "rollout_evaluation", "bootstrap", "rows") == 10_000
            else None,
            "<",
            5.0,
            " s",
        ),
    ]
    phases = _get(results, "rollout", "phases") or {}
    counted = _get(results, "rollout", "instructions") or {}
    for phase, limit, label in (
        ("shadow", 0.30, "shadow"),
        ("routing", 0.05, "canary routing (unpaired)"),
        ("canary", 0.30, "canary with paired scoring (shadow work: the shadow target)"),
    ):
        for path, what in (("predict", "/predict"), ("batch", "/predict/batch (1,000 rows)")):
            # A 30 % bound is within what timing resolves here; 5 % is not (one phase's
            # timed rounds differ by 20-30 %): routing is judged on its counted work.
            if limit < 0.10 and counted:
                cost, measure = counted_cost(counted, phase, path), "instructions counted"
            else:
                cost = rollout_cost(phases, phase, path) if phase in phases else None
                measure = "server CPU"
            rows.append(
                (
                    f"{what} cost of {label} ≤ {limit:.0%} ({measure} per request vs no "
                    "challenger)",
                    None if cost is None else 100 * cost,
                    "<=",
                    100 * limit,
                    " %",
                )
            )
    out = []
    for name, value, op, limit, unit in rows:
        if value is None:
            mark = NA
        else:
            ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
            mark = PASS if ok else SHORT
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "unit": unit, "mark": mark}
        )
    return out


# ---------------------------------------------------------------------------- rendering


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _mark(mark: str) -> str:
    return {PASS: "✅ pass", SHORT: "❌ short", NA: "n/a"}[mark]


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Bars of throughput and p99 for the servers measured (PNG)."""
    servers = _servers(results)
    names = [n for n in ORDER if n in servers]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [servers[n]["label"] for n in names]
    rps = [servers[n]["predict"]["rps"] for n in names]
    p99 = [servers[n]["predict"]["latency_ms"]["p99"] for n in names]
    colours = ["#1f77b4" if n == "service" else "#999999" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(labels, rps, color=colours)
    left.set_title("/predict throughput (req/s, higher is better)")
    right.bar(labels, p99, color=colours)
    right.set_title("/predict p99 latency (ms, log scale, lower is better)")
    right.set_yscale("log")
    for axis, values, fmt in ((left, rps, "{:,.0f}"), (right, p99, "{:,.1f}")):
        axis.tick_params(axis="x", labelrotation=15)
        for i, v in enumerate(values):
            axis.annotate(fmt.format(v), (i, v), ha="center", va="bottom", fontsize=9)
    connections = _get(results, "config", "connections")
    fig.suptitle(f"One uvicorn worker each, {connections} connections (wrk)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _machine(meta: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return [
        f"- **Date**: {meta.get('date')} (git {meta.get('git_commit') or 'unknown'})",
        f"- **Machine**: {meta.get('nproc')} CPUs ({meta.get('cpu_model')}), "
        f"{_f(meta.get('memory_gb'))} GB RAM, {meta.get('kernel')}",
        f"- **Python** {meta.get('python')}; {versions}",
        f"- **Load generator**: {meta.get('wrk')}, 1 thread; pinning: {meta.get('pinning')}",
        f"- **Load average** (1 min) at start {_f(meta.get('loadavg_start'), 2)}, "
        f"at end {_f(meta.get('loadavg_end'), 2)}: other work on the machine shows up here",
    ]


def _predict_table(results: dict[str, Any]) -> list[str]:
    servers = _servers(results)
    lines = [
        "| server | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req "
        "| ours ÷ this (req/s) | start-up s | worker RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ours = servers.get("service")
    for name in ORDER:
        s = servers.get(name)
        if not s:
            continue
        p = s["predict"]
        lat = p["latency_ms"]
        ratio = _div(ours["predict"]["rps"], p["rps"]) if ours else None
        lines.append(
            f"| {s['label']} | {_f(p['rps'], 0)} | {_f(lat['p50'])} | {_f(lat['p95'])} | "
            f"{_f(lat['p99'])} | {p['errors']} | {_f(p.get('server_cpu_ms_per_request'), 3)} | "
            f"{_ratio(ratio)} | {_f(s['startup_s'], 2)} | {_f(s['memory']['worker_mb'], 0)} |"
        )
    return lines


def _health_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| server | /health p50 ms | /health p99 ms | /health max ms | /predict req/s meanwhile | "
        "/predict errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ORDER:
        s = _servers(results).get(name)
        if not s or "health_under_load" not in s:
            continue
        h, p = s["health_under_load"]["health"], s["health_under_load"]["predict"]
        lines.append(
            f"| {s['label']} | {_f(h['latency_ms']['p50'], 2)} | {_f(h['latency_ms']['p99'], 2)} | "
            f"{_f(h['latency_ms']['max'], 1)} | {_f(p['rps'], 0)} | {p['errors']} |"
        )
    return lines


def _batch_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| server | rows per call | calls/s | rows/s | p50 ms | p99 ms | errors | ours ÷ this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    servers = _servers(results)
    ours = (servers.get("service") or {}).get("batch", {})
    for name in ORDER:
        s = servers.get(name)
        if not s or "batch" not in s:
            continue
        for size, b in s["batch"].items():
            ratio = _div(ours.get(size, {}).get("rows_per_s"), b["rows_per_s"])
            lines.append(
                f"| {s['label']} | {int(size):,} | {_f(b['rps'], 1)} | {_f(b['rows_per_s'], 0)} | "
                f"{_f(b['latency_ms']['p50'])} | {_f(b['latency_ms']['p99'])} | {b['errors']} | "
                f"{_ratio(ratio)} |"
            )
    return lines


def _v2_table(results: dict[str, Any]) -> list[str]:
    ours = _servers(results).get("service") or {}
    v2 = ours.get("v2") or {}
    if not v2:
        return ["(not measured)"]
    baselines = {
        "1": ("/predict", ours.get("predict")),
        "1000": ("/predict/batch", (ours.get("batch") or {}).get("1000")),
    }
    lines = [
        "| request | rows per call | connections | calls/s | rows/s | p50 ms | p99 ms | "
        "server CPU ms/call | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, figures in v2.items():
        name, baseline = baselines.get(size, ("", None))
        for label, b in (("V2 infer", figures), (f"{name} (JSON)", baseline)):
            if not b:
                continue
            rows_per_s = b.get("rows_per_s", b["rps"] * int(size))
            conns = b.get("connections", figures.get("connections"))
            lines.append(
                f"| {label} | {int(size):,} | {conns} | {_f(b['rps'], 1)} | "
                f"{_f(rows_per_s, 0)} | {_f(b['latency_ms']['p50'])} | "
                f"{_f(b['latency_ms']['p99'])} | {_f(b.get('server_cpu_ms_per_request'), 3)} | "
                f"{b['errors']} |"
            )
    return lines


def _speedup(timings: dict[str, Any], backend: str, size: str) -> float | None:
    return _div(timings["sklearn"][size]["median_ms"], timings[backend][size]["median_ms"])


def _inprocess_table(results: dict[str, Any]) -> list[str]:
    inproc = results.get("inprocess") or {}
    timings = inproc.get("timings") or {}
    if not timings:
        return ["(not measured)"]
    sizes = list(next(iter(timings.values())).keys())
    head = " | ".join(f"{int(s):,} row{'s' if int(s) > 1 else ''}: ms (rows/s)" for s in sizes)
    lines = [f"| backend | {head} |", "|---|" + "---:|" * len(sizes)]
    for backend, by_size in timings.items():
        cells = " | ".join(
            f"{_f(by_size[s]['median_ms'], 3)} ({_f(by_size[s]['rows_per_s'], 0)})" for s in sizes
        )
        lines.append(f"| {backend} | {cells} |")
    speedups = "; ".join(
        f"{int(s):,} row(s): "
        + ", ".join(f"{b} {_ratio(_speedup(timings, b, s))}" for b in FAST_BACKENDS if b in timings)
        + " faster than sklearn"
        for s in sizes
        if "sklearn" in timings
    )
    lines += [
        "",
        "Median of repeated calls, one thread each: the compiled forest (`churn/forest.py`, "
        f"numba), ONNX Runtime with {inproc.get('onnx_threads')} intra-op thread, the sklearn "
        f"pipeline with n_jobs={inproc.get('sklearn_n_jobs')}. {speedups}.",
        "",
    ]
    parities = inproc.get("parity") or {}
    if "rows" in parities:  # results written before the forest backend: ONNX only
        parities = {"onnx": parities}
    for backend, par in parities.items():
        lines.append(
            f"- {backend} vs sklearn on {par.get('rows', 0):,} generated customers: max |Δp| "
            f"{par.get('max_abs_diff', float('nan')):.2e}, mean |Δp| "
            f"{par.get('mean_abs_diff', float('nan')):.2e}; identical risk tiers "
            f"{par.get('tiers_identical', 0):,} of {par.get('rows', 0):,} "
            f"({100 * par.get('tier_agreement', 0):.3f} %), identical decisions "
            f"{100 * par.get('decision_agreement', 0):.3f} %."
        )
    return lines


def _explain_table(results: dict[str, Any]) -> list[str]:
    explain = _get(results, "http", "servers", "service", "explain")
    if not explain:
        return ["(not measured)"]
    light, rows = explain["light_connections"], explain["batch_rows"]
    lines = [
        "| request | connections | req/s | rows/s | p50 ms | p99 ms | errors | server CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shapes = (
        ("plain", "`/predict`", light, 1),
        ("explained", "`/predict?explain=true`", light, 1),
        ("batch_plain", f"`/predict/batch`, {rows} rows", explain["batch_connections"], rows),
        (
            "batch_explained",
            f"`/predict/batch?explain=true`, {rows} rows",
            explain["batch_connections"],
            rows,
        ),
    )
    for key, label, connections, per_call in shapes:
        r = explain[key]
        lines.append(
            f"| {label} | {connections} | {_f(r['rps'], 1)} | {_f(r['rps'] * per_call, 0)} | "
            f"{_f(r['latency_ms']['p50'], 2)} | {_f(r['latency_ms']['p99'], 2)} | "
            f"{r['errors']} | {_f(r.get('server_cpu_ms_per_request'), 3)} |"
        )
    inproc = results.get("explain_inprocess")
    if inproc:
        lines += [
            "",
            f"In process, one thread ({inproc['method']}; prediction by the served "
            f"{inproc['backend']} backend for the same rows); worst |base + Σ contributions − "
            f"probability| seen: {inproc['max_additivity_error']:.1e}.",
            "",
            "| rows per call | explain: median ms (rows/s) | p99 ms | predict: median ms |",
            "|---:|---:|---:|---:|",
        ]
        for size, t in inproc.items():
            if not isinstance(t, dict):
                continue
            e, p = t["explain"], t["predict"]
            lines.append(
                f"| {int(size):,} | {_f(e['median_ms'], 3)} ({_f(e['rows_per_s'], 0)}) | "
                f"{_f(e['p99_ms'], 3)} | {_f(p['median_ms'], 3)} |"
            )
    return lines


def _other_table(results: dict[str, Any]) -> list[str]:
    lines = ["| measurement | value |", "|---|---:|"]
    train = results.get("training")
    if train:
        lines.append(
            f"| training on {train['rows']:,} rows ({train['model']}; fit, evaluate, ONNX export, "
            f"MLflow logging) | {_f(train['train_s'], 1)} s |"
        )
    for n, d in (results.get("drift") or {}).items():
        lines.append(
            f"| drift check {int(n):,} rows × 7 features: frame vs frame / profile vs frame | "
            f"{_f(d['frame_vs_frame_s'], 2)} s / {_f(d['profile_vs_frame_s'], 2)} s |"
        )
    for n, d in (results.get("performance") or {}).items():
        lines.append(
            f"| estimated performance + {d['segments']} segments, {int(n):,} predictions "
            f"(half labelled): estimate / segments | {_f(d['estimate_s'], 2)} s / "
            f"{_f(d['segments_s'], 2)} s |"
        )
    for n, d in (results.get("rollout_evaluation") or {}).items():
        if n == "bootstrap":
            lines.append(
                f"| rollout: paired bootstrap, {d['resamples']:,} resamples of {d['rows']:,} "
                f"pairs | {_f(d['seconds'], 2)} s |"
            )
        else:
            lines.append(
                f"| rollout evidence, {int(n):,} labelled pairs (DeLong, losses, agreement, "
                f"{d['segments']} segments) | {_f(d['evidence_s'], 2)} s |"
            )
    for name in ORDER:
        s = _servers(results).get(name)
        if s:
            mem = s["memory"]
            lines.append(f"| {s['label']}: start-up to ready | {_f(s['startup_s'], 2)} s |")
            lines.append(
                f"| {s['label']}: resident memory, worker (whole process tree) | "
                f"{_f(mem['worker_mb'], 0)} MiB ({_f(mem['tree_mb'], 0)} MiB) |"
            )
    return lines


def _webhook_table(results: dict[str, Any]) -> list[str]:
    w = results.get("webhook")
    if not w:
        return ["Not measured in this run (`python -m bench.webhook` adds it)."]
    lines = [
        f"A real `mlflow server` (SQLite) and the API with {w['workers']} workers following "
        "`@production`; each move, made at a random point of the interval that matters, sets "
        "the alias with `MlflowClient` and is timed until `GET /model` shows every worker on "
        f"the new version (measured {w.get('date', 'in this run')}).",
        "",
        "| how the API learns of the move | moves | median s | max s | each move s |",
        "|---|---:|---:|---:|---|",
    ]
    rows = (
        ("webhook", f"webhook (polling every {w['webhook_poll_interval_s']:g} s as well)"),
        ("polling", f"polling only, MODEL_WATCH_INTERVAL={w['poll_interval_s']:g} s"),
    )
    for key, label in rows:
        d = w[key]
        each = ", ".join(f"{s:.2f}" for s in d["seconds"])
        lines.append(
            f"| {label} | {d['moves']} | {_f(d['median_s'], 2)} | {_f(d['max_s'], 2)} | {each} |"
        )
    return lines


def render(results: dict[str, Any], plot_path: Path | None, md_dir: Path) -> str:
    """RESULTS.md text; `plot_path` is linked relative to `md_dir`."""
    meta, cfg = results.get("meta", {}), results.get("config", {})
    quick = " — **smoke run (`--quick`): figures are not meaningful**" if cfg.get("quick") else ""
    out = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`python -m bench.run`) from "
        f"`results/{cfg.get('results_name', 'latest.json')}`{quick}. Every server runs one "
        "uvicorn worker"
        f"{' pinned to its own core' if meta.get('pinning', '').startswith('on') else ''}; "
        f"load: wrk, {cfg.get('connections')} connections, {cfg.get('warmup_s')} s warm-up then "
        f"{cfg.get('duration_s')} s measured. Model: {meta.get('model')}.",
        "",
        *_machine(meta),
        "",
        "## Targets",
        "",
        "| target | measured | mark |",
        "|---|---:|---|",
    ]
    for t in results.get("targets", []):
        value = t["value"]
        shown = "–" if value is None else f"{_f(value, 2)}{t['unit']}"
        out.append(f"| {t['target']} | {shown} | {_mark(t['mark'])} |")
    out += ["", "## 1. `/predict`, same load on each server", ""]
    if plot_path is not None:
        rel = plot_path.relative_to(md_dir) if plot_path.is_relative_to(md_dir) else plot_path
        out += [f"![throughput and p99 per server]({rel.as_posix()})", ""]
    out += _predict_table(results)
    out += [
        "",
        "Server CPU ms/req is the server's CPU time during the measured window divided by the "
        "requests it answered: steadier than req/s when other work shares the machine.",
        "",
        "## 2. `/health` while `/predict` is saturated",
        "",
        f"{cfg.get('health_connections')} connection(s) on the health path while "
        f"{cfg.get('connections')} saturate the predict path (mlflow: `/health` while "
        "`/invocations` is saturated). `–`: not one answer in the whole window.",
        "",
        *_health_table(results),
        "",
        "## 3. Batches",
        "",
        f"{cfg.get('batch_connections')} connections; mlflow gets the same rows as "
        "`dataframe_records`.",
        "",
        *_batch_table(results),
        "",
        "## 3b. Open Inference Protocol (V2): `POST /v2/models/{name}/infer`",
        "",
        "The same server, right after the JSON loads above: one row per call under "
        "`/predict`'s load, 1,000 rows per call under the batch load, each beside the JSON "
        "request it replaces (same rows).",
        "",
        *_v2_table(results),
        "",
        "## 4. In-process inference: compiled forest and ONNX Runtime vs the sklearn pipeline",
        "",
        *_inprocess_table(results),
        "",
        "## 5. Training, drift check, start-up, memory",
        "",
        *_other_table(results),
        "",
        "## 6. Explanations (`?explain=true`)",
        "",
        "The same service, one request at a time (light load) and batches of explained rows, "
        "each beside the plain call measured in this run.",
        "",
        *_explain_table(results),
        "",
        "## 7. Alias move → every worker serving the new version: webhook vs polling",
        "",
        *_webhook_table(results),
        "",
        "## 8. Progressive delivery: a challenger beside the champion",
        "",
        *_rollout_table(results),
        "",
        "## Ratios (same run)",
        "",
        "| ratio | value |",
        "|---|---:|",
        *[f"| {k} | {_ratio(v)} |" for k, v in (results.get("ratios") or {}).items()],
        "",
    ]
    budget = _budget_notes(results)
    if budget:
        out += ["## What bounds the targets (from the figures above)", "", *budget, ""]
    return "\n".join(out)


def _instructions_table(counted: dict[str, Any] | None) -> list[str]:
    """The same phases counted under Callgrind (bench.instructions): work, not time."""
    if not counted:
        return ["", "(instructions not counted in this run)"]
    lines = [
        "",
        "The same phases counted, not timed (`bench/instructions.py`: the app in one process "
        "under Valgrind's Callgrind, every thread's instructions while the measured requests "
        "run, caches simulated; a 1,000-row batch counts within ±0.3 % from run to run and "
        "/predict within a few per cent, as 32 concurrent callers fall into micro-batches, "
        "where the timed rounds of one phase differ by 20–30 % on this machine). Each phase "
        "is counted between two off windows (off, shadow, off, canary, off, routing, off) and "
        "extra = its count per request ÷ the mean of those two − 1, so the process's own "
        "drift over the run (its log grows) is charged to no phase; off's row is the mean of "
        "its windows. LL misses: a simulated 8 MiB last-level cache.",
        "",
        "| phase | /predict instructions/req | extra | LL misses/req | extra | /predict/batch "
        "instructions/req | extra | LL misses/req | extra |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def extra(figures: dict[str, Any], key: str) -> str:
        value = figures.get(key)
        return "–" if value is None else f"{100 * value:+.1f} %"

    for name in ("off", "shadow", "canary", "routing"):
        row = [name]
        for path in ("predict", "batch"):
            figures = counted[path].get(name)
            if figures is None:
                row += ["–"] * 4
                continue
            row += [
                f"{figures['instructions_per_request']:,.0f}",
                extra(figures, "extra_instructions"),
                f"{figures['ll_misses_per_request']:,.0f}",
                extra(figures, "extra_ll_misses"),
            ]
        lines.append("| " + " | ".join(row) + " |")
    drift = [
        f"{label} {100 * counted[path]['off']['drift']:+.1f} %"
        for path, label in (("predict", "/predict"), ("batch", "/predict/batch"))
        if "drift" in counted[path]["off"]
    ]
    if drift:
        lines += ["", f"Off's first window to its last: {', '.join(drift)}."]
    return lines


def _rollout_table(results: dict[str, Any]) -> list[str]:
    rollout = results.get("rollout")
    if not rollout:
        return ["(not measured: `--skip rollout`)"]
    phases = rollout["phases"]
    lines = [
        "One service (one worker) serving `@production`, switched by the registry alone "
        "between no `@challenger` (off), a challenger in shadow, a canary at "
        f"{rollout['canary_share']:.0%} with the champion also scoring the challenger's rows "
        "(canary: paired, the default) and the same canary unpaired (routing: "
        "`rollout.py canary --unpaired`); /predict with an `X-Routing-Key` over 1,000 "
        "customers, /predict/batch with 1,000 customers each with a `customer_id`. Best of "
        f"{rollout['rounds']} round(s) per phase, phases interleaved; cost = 1 − throughput ÷ "
        f"off's. Two versions trained on {rollout['train_rows']:,} rows each.",
        "",
        "| phase | /predict req/s | p99 ms | cost | server CPU ms/req | batch rows/s | p99 ms "
        "| cost | server CPU ms/batch | answered by the challenger | shadow rows scored / "
        "dropped | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cpu(name: str, path: str) -> str:
        spent = least_cpu(phases[name], path)
        cost = rollout_cost(phases, name, path) if name != "off" else None
        if spent is None:
            return "–"
        return _f(spent, 3) if cost is None else f"{_f(spent, 3)} (cost {100 * cost:.1f} %)"

    for name in ("off", "shadow", "canary", "routing"):
        if name not in phases:
            continue
        p = phases[name]
        share = p.get("challenger_share")
        cost = {k: p.get(f"{k}_cost") for k in ("predict", "batch")}
        shown = {k: "–" if v is None else f"{100 * v:.1f} %" for k, v in cost.items()}
        lines.append(
            f"| {name} | {_f(p['predict_rps'], 0)} | {_f(p['predict_p99_ms'])} | "
            f"{shown['predict']} | {cpu(name, 'predict')} | {_f(p['batch_rows_per_s'], 0)} | "
            f"{_f(p['batch_p99_ms'])} | {shown['batch']} | {cpu(name, 'batch')} | "
            f"{'–' if share is None else f'{100 * share:.1f} %'} | "
            f"{p.get('shadow_scored', 0):,.0f} / {p.get('shadow_dropped', 0):,.0f} | "
            f"{p['predict_errors'] + p['batch_errors']} |"
        )
    lines += _instructions_table(rollout.get("instructions"))
    shadow = rollout.get("shadow_predictions", {})
    if rollout.get("note"):  # e.g. a section re-measured apart from the rest of the run
        lines += ["", str(rollout["note"])]
    lines += [
        "",
        f"Shadow scores over the whole section: {shadow.get('success', 0):,.0f} scored, "
        f"{shadow.get('error', 0):,.0f} failed, {shadow.get('dropped', 0):,.0f} dropped "
        "(its time budget `SHADOW_MAX_TIME_SHARE` spent, or a full queue or log: counted, "
        "never waited for). Server CPU ms per request is the lowest of the rounds; its cost is "
        "1 − off's ÷ the phase's, what throughput loses when the server's core is the "
        "bottleneck, and the targets' measure: steadier than throughput when other work "
        "shares the machine (measured "
        f"{rollout.get('measured_at', '?')}, load average at the end: "
        f"{_f(rollout.get('loadavg_end'))}).",
    ]
    off = phases["off"]
    for path, rate, label in (
        ("predict", off["predict_rps"], "/predict"),
        ("batch", off["batch_rows_per_s"] / 1000, "/predict/batch"),
    ):
        spent = least_cpu(off, path)
        if spent is not None and spent * rate / 1000 < 0.9:
            lines.append(
                f"\n{label} kept the server's core only {spent * rate / 10:.0f} % busy with no "
                "challenger, so its throughput was bound elsewhere (the load, the shared "
                "machine) and the throughput cost columns understate: the CPU cost is the one "
                "that counts."
            )
    return lines


def least_cpu(phase: dict[str, Any], path: str) -> float | None:
    """The lowest server CPU ms per request of a rollout phase's rounds."""
    spent = [
        r[path]["server_cpu_ms_per_request"]
        for r in phase.get("rounds", [])
        if r[path].get("server_cpu_ms_per_request") is not None
    ]
    return min(spent) if spent else None


def rollout_cost(phases: dict[str, Any], phase: str, path: str) -> float | None:
    """A phase's throughput cost as the server's CPU per request says it: 1 - off's CPU per
    request / the phase's (what the throughput loses when the server's core is the
    bottleneck; steadier than the throughput itself on a shared machine)."""
    spent, base = least_cpu(phases[phase], path), least_cpu(phases["off"], path)
    if spent is None or base is None or spent == 0:
        return None
    return 1 - base / spent


def counted_cost(counted: dict[str, Any], phase: str, path: str) -> float | None:
    """A phase's throughput cost as its counted work says it (bench.instructions): 1 - the
    instructions per request of the off windows around it / the phase's, what the throughput
    loses when the server's core is the bottleneck (the same form as `rollout_cost`)."""
    figures = counted.get(path, {}).get(phase)
    if not figures or "extra_instructions" not in figures:
        return None
    return 1 - 1 / (1 + figures["extra_instructions"])


def _budget_notes(results: dict[str, Any]) -> list[str]:
    """Per-request and per-row CPU budgets the targets imply, next to what was spent."""
    notes = []
    servers = _servers(results)
    ours, ceiling = servers.get("service"), servers.get("ceiling")
    if ours and ceiling:
        spent = ours["predict"].get("server_cpu_ms_per_request")
        floor = ceiling["predict"].get("server_cpu_ms_per_request")
        if spent and floor:
            notes.append(
                f"- `/predict` ≥ 0.7 × ceiling leaves the service {1000 * floor / 0.7:.0f} µs of "
                f"server CPU per request when the ceiling (HTTP, validation, response, nothing "
                f"else) uses {1000 * floor:.0f} µs; the service used {1000 * spent:.0f} µs "
                "(model call, micro-batch hand-off, metrics, access log, prediction log)."
            )
    served = served_backend(results)
    model = _get(results, "inprocess", "timings", served, "1000")
    batch = _get(results, "http", "servers", "service", "batch", "1000")
    if model and batch:
        notes.append(
            f"- Batches: the model alone, in process on one thread ({served} backend, as "
            f"served), computes {model['rows_per_s']:,.0f} rows/s at 1,000 rows per call "
            f"({1e6 / model['rows_per_s']:.1f} µs per row for this forest); over HTTP the "
            f"service reached {batch['rows_per_s']:,.0f} rows/s, with JSON parsing, "
            "validation, the response and the prediction log on top, on the same core."
        )
    v2 = _get(results, "http", "servers", "service", "v2", "1000")
    if model and batch and v2 and v2.get("server_cpu_ms_per_request"):
        cpu = v2["server_cpu_ms_per_request"]
        json_cpu = batch.get("server_cpu_ms_per_request")
        json_part = (
            f"; the JSON batch used {json_cpu:.2f} ms per call ({1e6 / json_cpu:,.0f} rows/s)"
            if json_cpu
            else ""
        )
        notes.append(
            f"- V2 at 1,000 rows per call used {cpu:.2f} ms of server CPU per call "
            f"({cpu:.2f} µs per row, model call included): {1e6 / cpu:,.0f} rows/s on a core "
            f"of its own{json_part}. Rows/s over HTTP fall below that when other work takes "
            "a share of the server's core (the load average above)."
        )
    return notes


# Sections other benchmarks write into RESULTS.md (bench/spark_batch.py); kept on re-render.
KEPT_SECTIONS = (("<!-- spark-batch:start -->", "<!-- spark-batch:end -->"),)


def section(text: str, start: str, end: str) -> str | None:
    """The block from ``start`` to ``end`` (markers included) in ``text``, if any."""
    first = text.find(start)
    last = text.find(end, first)
    return text[first : last + len(end)] if first >= 0 and last >= 0 else None


def put_section(text: str, start: str, end: str, block: str) -> str:
    """``text`` with its ``start``..``end`` block replaced by ``block`` (appended if none)."""
    old = section(text, start, end)
    if old is not None:
        return text.replace(old, block)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_report(results: dict[str, Any], results_dir: Path, md_path: Path) -> Path:
    """Plot and RESULTS.md from the results (ratios and targets are recomputed); the
    sections other benchmarks wrote (``KEPT_SECTIONS``) stay."""
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    png = plot(results, results_dir / "throughput.png")
    text = render(results, png, md_path.parent)
    old = md_path.read_text() if md_path.exists() else ""
    for start, end in KEPT_SECTIONS:
        kept = section(old, start, end)
        if kept is not None:
            text = put_section(text, start, end, kept)
    md_path.write_text(text)
    return md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-render RESULTS.md from a results JSON")
    parser.add_argument("results", type=Path, nargs="?", default=Path("bench/results/latest.json"))
    parser.add_argument("--md", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    print(write_report(results, args.results.parent, args.md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
