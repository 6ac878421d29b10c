"""HTTP sections: /predict side by side, /health under load, /predict/batch, start-up, memory.

Each server is started alone (nothing else of ours is running), warmed up, measured, and
stopped; with pinning on, the server gets one core and wrk the other.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load as loadgen
from bench.servers import RunningServer, ServerSpec, resident_memory, running, uvicorn_argv


@dataclass(frozen=True)
class HttpConfig:
    """Load shapes and timings of the HTTP sections."""

    duration_s: float
    warmup_s: float
    connections: int
    health_connections: int
    batch_connections: int
    batch_sizes: tuple[int, ...]
    server_cpu: int | None
    load_cpu: int | None
    # ?explain=true: one connection for "light load", rows per explained batch
    light_connections: int = 1
    explain_batch_rows: int = 100


@dataclass(frozen=True)
class Bodies:
    """Request bodies on disk (wrk sends a file): one customer and batches, in each format
    ("v2": an Open Inference Protocol request, one tensor per feature of `v2_types`)."""

    directory: Path
    customers: list[dict[str, Any]]
    v2_model: str = ""  # the served model's name: its V2 infer path
    v2_types: dict[str, str] = field(default_factory=dict)  # feature -> tensor datatype

    def path(self, fmt: str, rows: int) -> Path:
        path = self.directory / f"body_{fmt}_{rows}.json"
        if not path.exists():
            chosen = [self.customers[i % len(self.customers)] for i in range(rows)]
            if fmt == "v2":
                payload: Any = {
                    "inputs": [
                        {
                            "name": name,
                            "shape": [rows],
                            "datatype": datatype,
                            "data": [
                                int(c[name]) if datatype == "INT64" else c[name] for c in chosen
                            ],
                        }
                        for name, datatype in self.v2_types.items()
                    ]
                }
            elif fmt == "mlflow":
                payload = {"dataframe_records": chosen}
            elif fmt == "service" and rows > 1:
                payload = {"customers": chosen}
            else:
                payload = chosen[0]
            path.write_text(json.dumps(payload))
        return path


def server_specs(
    bundle_dir: Path, mlflow_model_uri: str, tracking_uri: str, run_dir: Path
) -> list[ServerSpec]:
    """The four servers, in the order they are measured. ``{port}`` is filled in at start."""
    model_path = str(bundle_dir / "model.pkl")
    metrics_dir = run_dir / "prometheus"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    bench_env = {"BENCH_MODEL_PATH": model_path}
    return [
        ServerSpec(
            name="service",
            label="this service",
            # As the image runs it (docker/entrypoint.sh), one worker, not WEB_CONCURRENCY.
            argv=uvicorn_argv("app.main:app", "--proxy-headers"),
            env={
                "MODEL_PATH": model_path,
                "DATABASE_URL": f"sqlite:///{run_dir / 'prediction_log.db'}",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PREDICTION_LOG_ENABLED": "true",
                "LOG_LEVEL": "INFO",
                "ENVIRONMENT": "production",
                "MODEL_REQUIRED": "true",
                "PYTHONUNBUFFERED": "1",
            },
            ready_path="/ready",
            batch_path="/predict/batch",
            body_format="service",
        ),
        ServerSpec(
            name="mlflow",
            label="mlflow models serve",
            argv=[
                str(Path(sys.executable).with_name("mlflow")),
                "models",
                "serve",
                "-m",
                mlflow_model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
                "-w",
                "1",
            ],
            env={"MLFLOW_TRACKING_URI": tracking_uri},
            ready_path="/health",
            predict_path="/invocations",
            health_path="/health",
            batch_path="/invocations",
            body_format="mlflow",
        ),
        ServerSpec(
            name="blog",
            label="blog-style baseline",
            # As a tutorial runs it: uvicorn's defaults (access log on).
            argv=uvicorn_argv("bench.baseline_app:create_app", "--factory"),
            env=bench_env,
        ),
        ServerSpec(
            name="ceiling",
            label="constant-answer ceiling",
            argv=uvicorn_argv("bench.ceiling_app:create_app", "--factory", "--no-access-log"),
            env=bench_env,
        ),
    ]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children so far (from /proc)."""
    from bench.servers import _children

    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _measure(server: RunningServer, load: loadgen.Load, cfg: HttpConfig) -> dict[str, Any]:
    """One wrk run, plus the server's CPU time per request (steadier than req/s under noise)."""
    before = _cpu_seconds(server.process.pid)
    result = loadgen.run_load(load, cfg.load_cpu)
    used = _cpu_seconds(server.process.pid) - before
    answered = result["requests"]
    result["server_cpu_ms_per_request"] = 1000 * used / answered if answered else None
    result["loadavg_1m"] = os.getloadavg()[0]
    return result


def _warm(server: RunningServer, path: str, body: Path | None, cfg: HttpConfig) -> None:
    if cfg.warmup_s > 0:
        loadgen.run_load(
            loadgen.Load(server.url(path), cfg.connections, cfg.warmup_s, body), cfg.load_cpu
        )


def predict_under_load(server: RunningServer, bodies: Bodies, cfg: HttpConfig) -> dict[str, Any]:
    spec = server.spec
    body = bodies.path(spec.body_format, 1)
    _warm(server, spec.predict_path, body, cfg)
    load = loadgen.Load(server.url(spec.predict_path), cfg.connections, cfg.duration_s, body)
    return _measure(server, load, cfg)


def health_while_saturated(
    server: RunningServer, bodies: Bodies, cfg: HttpConfig
) -> dict[str, Any]:
    """/health latency from its own connection while `connections` saturate /predict."""
    spec = server.spec
    body = bodies.path(spec.body_format, 1)
    predict = loadgen.Load(server.url(spec.predict_path), cfg.connections, cfg.duration_s, body)
    health = loadgen.Load(server.url(spec.health_path), cfg.health_connections, cfg.duration_s)
    busy = loadgen.start_wrk(predict, cfg.load_cpu)
    time.sleep(0.2)  # let /predict saturate first
    probe = loadgen.start_wrk(health, cfg.load_cpu)
    health_result = loadgen.collect(probe, health)
    predict_result = loadgen.collect(busy, predict)
    return {"health": health_result, "predict": predict_result}


def batch_throughput(server: RunningServer, bodies: Bodies, cfg: HttpConfig) -> dict[str, Any]:
    """Rows per second on the batch path for each batch size."""
    spec = server.spec
    assert spec.batch_path is not None
    out: dict[str, Any] = {}
    for size in cfg.batch_sizes:
        body = bodies.path(spec.body_format, size)
        if cfg.warmup_s > 0:
            loadgen.run_load(
                loadgen.Load(server.url(spec.batch_path), cfg.batch_connections, 1.0, body),
                cfg.load_cpu,
            )
        url = server.url(spec.batch_path)
        result = _measure(
            server, loadgen.Load(url, cfg.batch_connections, cfg.duration_s, body), cfg
        )
        result["rows_per_call"] = size
        result["rows_per_s"] = result["rps"] * size if result["errors"] == 0 else 0.0
        out[str(size)] = result
    return out


def explain_latency(server: RunningServer, bodies: Bodies, cfg: HttpConfig) -> dict[str, Any]:
    """?explain=true against the plain call in the same run: one row at light load (one
    connection, so latency is the request's own cost), and explained rows/s at
    `cfg.explain_batch_rows` rows per call (the batch connections)."""
    spec = server.spec
    assert spec.batch_path is not None
    one = bodies.path(spec.body_format, 1)
    many = bodies.path(spec.body_format, cfg.explain_batch_rows)
    out: dict[str, Any] = {
        "light_connections": cfg.light_connections,
        "batch_rows": cfg.explain_batch_rows,
        "batch_connections": cfg.batch_connections,
    }
    shapes = {
        "plain": (spec.predict_path, one, cfg.light_connections),
        "explained": (f"{spec.predict_path}?explain=true", one, cfg.light_connections),
        "batch_plain": (spec.batch_path, many, cfg.batch_connections),
        "batch_explained": (f"{spec.batch_path}?explain=true", many, cfg.batch_connections),
    }
    for name, (path, body, connections) in shapes.items():
        if cfg.warmup_s > 0:
            loadgen.run_load(
                loadgen.Load(server.url(path), connections, cfg.warmup_s, body), cfg.load_cpu
            )
        load = loadgen.Load(server.url(path), connections, cfg.duration_s, body)
        result = _measure(server, load, cfg)
        if name.startswith("batch"):
            rows = cfg.explain_batch_rows
            result["rows_per_s"] = result["rps"] * rows if result["errors"] == 0 else 0.0
        out[name] = result
    return out


def v2_throughput(server: RunningServer, bodies: Bodies, cfg: HttpConfig) -> dict[str, Any]:
    """The Open Inference Protocol's infer: one row per call under /predict's load (its
    connections), and 1,000 rows per call under the batch load, on the same server."""
    url = server.url(f"/v2/models/{bodies.v2_model}/infer")
    out: dict[str, Any] = {}
    for size, connections in ((1, cfg.connections), (1000, cfg.batch_connections)):
        body = bodies.path("v2", size)
        if cfg.warmup_s > 0:
            loadgen.run_load(loadgen.Load(url, connections, 1.0, body), cfg.load_cpu)
        result = _measure(server, loadgen.Load(url, connections, cfg.duration_s, body), cfg)
        result["rows_per_call"] = size
        result["connections"] = connections
        result["rows_per_s"] = result["rps"] * size if result["errors"] == 0 else 0.0
        out[str(size)] = result
    return out


def measure_server(
    spec: ServerSpec, bodies: Bodies, cfg: HttpConfig, log_dir: Path, sections: set[str]
) -> dict[str, Any]:
    """Start one server, run every HTTP section that applies to it, stop it."""
    say(f"{spec.label}: starting")
    with running(spec, log_dir, cfg.server_cpu) as server:
        result: dict[str, Any] = {"label": spec.label, "startup_s": server.startup_s}
        say(f"{spec.label}: ready in {server.startup_s:.2f}s; /predict for {cfg.duration_s:g}s")
        result["predict"] = predict_under_load(server, bodies, cfg)
        if "health" in sections:
            say(f"{spec.label}: {spec.health_path} while {spec.predict_path} is saturated")
            result["health_under_load"] = health_while_saturated(server, bodies, cfg)
        if "batch" in sections and spec.batch_path is not None:
            say(f"{spec.label}: batches of {', '.join(map(str, cfg.batch_sizes))} rows")
            result["batch"] = batch_throughput(server, bodies, cfg)
        if "explain" in sections and spec.name == "service":
            say(f"{spec.label}: ?explain=true vs plain, 1 row at light load and batches")
            result["explain"] = explain_latency(server, bodies, cfg)
        if "v2" in sections and spec.name == "service" and bodies.v2_model:
            say(f"{spec.label}: Open Inference Protocol infer, 1 and 1,000 rows per call")
            result["v2"] = v2_throughput(server, bodies, cfg)
        result["memory"] = resident_memory(server.process.pid)
        if spec.name == "service":
            # every load above (warm-ups included) was logged, or dropped and counted here
            result["prediction_log"] = prediction_log_counts(server)
    say(
        f"{spec.label}: {result['predict']['rps']:.0f} req/s, "
        f"p99 {result['predict']['latency_ms']['p99']:.1f} ms, "
        f"{result['predict']['errors']} errors"
    )
    return result


def prediction_log_counts(server: RunningServer) -> dict[str, float]:
    """Predictions answered and prediction-log records dropped, from the service's /metrics."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    counts = {"predictions": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == "predictions_total":
            counts["predictions"] += float(line.rsplit(" ", 1)[1])
        elif name == "prediction_log_dropped_total":
            counts["dropped"] += float(line.rsplit(" ", 1)[1])
    return counts


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
