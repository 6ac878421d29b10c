"""A quick in-process throughput check of POST /predict, /predict/batch and the Open Inference
Protocol's infer (one row, and `--batch` rows) through the whole ASGI stack (middleware, fast
path or route, micro-batcher, prediction log), no sockets.

Not part of ``make bench`` (which measures over HTTP); it answers "did a change to the request
path cost throughput?" in a few seconds::

    .venv/bin/python -m bench.asgi_timing --model artifacts/model.pkl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.main import create_app
from app.settings import Settings
from bench.asgi import post_scope

CUSTOMER: dict[str, Any] = {
    "tenure": 12,
    "monthly_charges": 70.5,
    "total_charges": 846.0,
    "num_products": 2,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
    "internet_service": "Fiber optic",
}


async def _call(app: Any, path: str, body: bytes) -> int:
    scope = post_scope(path, body)
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _rate(
    app: Any, path: str, body: bytes, seconds: float, concurrency: int
) -> tuple[float, float]:
    """Requests per second with `concurrency` clients in flight, and the process's CPU
    microseconds per request (every thread: loop, inference, log writer), which a machine
    shared with other work disturbs far less than the rate."""
    done = 0
    stop = time.perf_counter() + seconds
    cpu = time.process_time()

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status = await _call(app, path, body)
            assert status == 200, status
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - started)
    return rate, 1e6 * (time.process_time() - cpu) / max(done, 1)


def _v2_body(app: Any, rows: int) -> tuple[str, bytes]:
    """The served model's V2 infer path and a request of `rows` copies of CUSTOMER."""
    codec = app.state.service.model.v2
    inputs = [
        {"name": name, "shape": [rows], "datatype": dt, "data": [CUSTOMER[name]] * rows}
        for name, dt in codec.datatypes.items()
    ]
    return f"/v2/models/{codec.model_name}/infer", json.dumps({"inputs": inputs}).encode()


async def run(model: Path, seconds: float, rounds: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            model_path=model,
            database_url=f"sqlite:///{Path(tmp) / 'log.db'}",
            log_level="WARNING",
            environment="test",
            max_batch_size=max(batch, 1000),
        )
        app = create_app(settings)
        single = json.dumps(CUSTOMER).encode()
        many = json.dumps({"customers": [CUSTOMER] * batch}).encode()
        out: dict[str, list[float]] = {
            "predict_rps": [],
            "predict_cpu_us": [],
            f"batch{batch}_rows_per_s": [],
            f"batch{batch}_cpu_us_per_row": [],
            "v2_rps": [],
            "v2_cpu_us": [],
            f"v2_{batch}_rows_per_s": [],
            f"v2_{batch}_cpu_us_per_row": [],
        }
        async with app.router.lifespan_context(app):
            v2_path, v2_single = _v2_body(app, 1)
            _, v2_many = _v2_body(app, batch)
            await _rate(app, "/predict", single, 0.5, 8)  # warm-up
            await _rate(app, "/predict/batch", many, 0.5, 2)
            for _ in range(rounds):
                rps, cpu = await _rate(app, "/predict", single, seconds, 8)
                out["predict_rps"].append(rps)
                out["predict_cpu_us"].append(cpu)
                rps, cpu = await _rate(app, "/predict/batch", many, seconds, 2)
                out[f"batch{batch}_rows_per_s"].append(rps * batch)
                out[f"batch{batch}_cpu_us_per_row"].append(cpu / batch)
                rps, cpu = await _rate(app, v2_path, v2_single, seconds, 8)
                out["v2_rps"].append(rps)
                out["v2_cpu_us"].append(cpu)
                rps, cpu = await _rate(app, v2_path, v2_many, seconds, 2)
                out[f"v2_{batch}_rows_per_s"].append(rps * batch)
                out[f"v2_{batch}_cpu_us_per_row"].append(cpu / batch)
        return {k: round(statistics.median(v), 1) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model.pkl"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.model, args.seconds, args.rounds, args.batch))))


if __name__ == "__main__":
    main()
