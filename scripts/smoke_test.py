#!/usr/bin/env python3
"""Smoke-test a deployed churn API: liveness, readiness, one prediction, metrics.

Used by the CD pipeline after each deploy and by the container image test. Standard
library only, so it runs on a bare CI runner. Exits non-zero with the failing check named.

    python scripts/smoke_test.py --url https://staging.example.com --wait 120
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

SAMPLE_CUSTOMER: dict[str, Any] = {
    "tenure": 24,
    "monthly_charges": 70.5,
    "total_charges": 1692.0,
    "num_products": 2,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
    "internet_service": "Fiber optic",
}


class SmokeTestFailure(RuntimeError):
    """One check failed; the message says which endpoint and what came back."""


def request(
    url: str, payload: dict[str, Any] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """GET (or POST JSON when payload is given) and return (status, body), errors included."""
    data = None if payload is None else json.dumps(payload).encode()
    if not url.startswith(("http://", "https://")):
        raise SmokeTestFailure(f"refusing non-HTTP URL {url!r}")
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")  # noqa: S310 (scheme checked above)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 (checked)
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(base: str, wait_s: float) -> None:
    """Poll /ready until 200 (model loaded) or until wait_s passes."""
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        try:
            status, body = request(f"{base}/ready", timeout=5)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise SmokeTestFailure(f"GET /ready did not return 200 within {wait_s:.0f}s: {last}")
        time.sleep(1)


def check_health(base: str) -> None:
    status, body = request(f"{base}/health")
    if status != 200 or json.loads(body).get("status") != "healthy":
        raise SmokeTestFailure(f"GET /health answered {status} {body[:200]!r}")


def check_predict(base: str, model_version: str | None = None) -> float:
    """POST the sample customer; with `model_version`, the answer must come from that version
    (a blue/green switch must not go live with a colour serving another model)."""
    status, body = request(f"{base}/predict", SAMPLE_CUSTOMER)
    if status != 200:
        raise SmokeTestFailure(f"POST /predict answered {status} {body[:300]!r}")
    answer = json.loads(body)
    probability = answer.get("churn_probability")
    if not isinstance(probability, int | float) or not 0.0 <= probability <= 1.0:
        raise SmokeTestFailure(f"POST /predict churn_probability is not in [0, 1]: {body!r}")
    served = answer.get("model_version")
    if model_version is not None and str(served) != model_version:
        raise SmokeTestFailure(
            f"POST /predict was answered by model_version {served!r}, expected {model_version!r}"
        )
    return float(probability)


def check_metrics(base: str) -> None:
    status, body = request(f"{base}/metrics")
    if status != 200 or b"# TYPE" not in body:
        raise SmokeTestFailure(f"GET /metrics answered {status} without Prometheus text")


def run(base: str, wait_s: float, metrics: bool, model_version: str | None = None) -> float:
    """All checks in order; returns the sample's churn probability."""
    base = base.rstrip("/")
    wait_until_ready(base, wait_s)
    check_health(base)
    probability = check_predict(base, model_version)
    if metrics:
        check_metrics(base)
    return probability


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test a deployed churn API.")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for /ready")
    parser.add_argument("--no-metrics", action="store_true", help="skip the /metrics check")
    parser.add_argument(
        "--model-version", help="fail unless /predict is answered by this model version"
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")
    try:
        probability = run(args.url, args.wait, not args.no_metrics, args.model_version)
    except (SmokeTestFailure, urllib.error.URLError, OSError, ValueError) as exc:
        print(f"SMOKE TEST FAILED ({args.url}): {exc}", file=sys.stderr)
        return 1
    print(f"smoke test passed ({args.url}): churn_probability={probability:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
