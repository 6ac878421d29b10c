"""Each role's p95 latency and error ratio over the window, read from Prometheus.

The API's metrics carry the role that answered (``role="champion"|"challenger"``); in shadow
the challenger answers nobody, so its figures come from the shadow metrics
(``shadow_latency_seconds``, ``shadow_predictions_total``). Fail closed: Prometheus given but
unreachable, or answering an error, raises EvaluationError (exit 2), never "healthy".
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import httpx

from churn.rollout import CANARY
from monitoring.rollout.results import EvaluationError, RoleHealth


def _range(window: timedelta) -> str:
    return f"{max(60, int(window.total_seconds()))}s"


def queries(stage: str, window: timedelta) -> dict[str, dict[str, str]]:
    """role -> {figure: PromQL}; summed over every worker and replica."""
    w = _range(window)

    def p95(metric: str, selector: str) -> str:
        return (
            f"histogram_quantile(0.95, sum by (le) (increase({metric}_bucket{{{selector}}}[{w}])))"
        )

    def total(metric: str, selector: str) -> str:
        return f"sum(increase({metric}{{{selector}}}[{w}]))"

    champion = {
        "p95": p95("prediction_latency_seconds", 'role="champion"'),
        "errors": total("predictions_total", 'role="champion",outcome="error"'),
        "requests": total("predictions_total", 'role="champion"'),
    }
    if stage == CANARY:
        challenger = {
            "p95": p95("prediction_latency_seconds", 'role="challenger"'),
            "errors": total("predictions_total", 'role="challenger",outcome="error"'),
            "requests": total("predictions_total", 'role="challenger"'),
        }
    else:
        challenger = {
            "p95": p95("shadow_latency_seconds", ""),
            "errors": total("shadow_predictions_total", 'outcome="error"'),
            "requests": total("shadow_predictions_total", 'outcome=~"success|error"'),
        }
    return {"champion": champion, "challenger": challenger}


def _instant(client: httpx.Client, base_url: str, expr: str) -> float | None:
    try:
        response = client.get(f"{base_url}/api/v1/query", params={"query": expr})
    except httpx.HTTPError as exc:
        raise EvaluationError(
            f"Prometheus at {base_url} is unreachable ({type(exc).__name__}); the guardrails "
            "cannot be checked, so nothing is decided"
        ) from None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or body.get("status") != "success":
        raise EvaluationError(
            f"Prometheus at {base_url} answered HTTP {response.status_code} "
            f"({str(body.get('error', ''))[:200]}) to {expr}"
        )
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def read_health(base_url: str, stage: str, window: timedelta) -> tuple[RoleHealth, ...]:
    """Both roles' figures; a figure Prometheus has no series (or no traffic) for is None."""
    base_url = base_url.rstrip("/")
    out = []
    with httpx.Client(timeout=10) as client:
        for role, exprs in queries(stage, window).items():
            p95 = _instant(client, base_url, exprs["p95"])
            errors = _instant(client, base_url, exprs["errors"])
            requests = _instant(client, base_url, exprs["requests"])
            ratio = None
            if requests is not None and requests > 0:
                ratio = (errors or 0.0) / requests
            out.append(
                RoleHealth(
                    role=role,
                    p95_latency_ms=None if p95 is None else p95 * 1000.0,
                    error_ratio=ratio,
                    requests=requests,
                )
            )
    return tuple(out)
