"""Run the benchmark suite: ``python -m bench.run [--quick] [--duration S] [--skip mlflow,...]``.

Measures, in one run on this machine: /predict on this service, ``mlflow models serve``, a
blog-style FastAPI app and a constant-answer ceiling under the same load; /health while
/predict is saturated; batch rows/s (and prediction-log drops); the compiled forest and ONNX
vs sklearn in process with parity; training time; drift check and label-free performance
estimation time; the rollout evaluation's time; start-up time and memory; an alias move
reaching every worker, by webhook and by polling. Writes ``<out>/latest.json``, the plot
``<out>/throughput.png`` and ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from app.v2_codec import datatype_of
from bench import http, inprocess
from bench.report import targets, write_report
from bench.servers import ROOT
from churn.bundle import BundleError, ModelBundle, load_bundle
from churn.datagen import generate_customers
from churn.training import git_commit

SERVERS = ("service", "mlflow", "blog", "ceiling")
SECTIONS = (
    "health",
    "batch",
    "v2",
    "explain",
    "inprocess",
    "training",
    "drift",
    "performance",
    "webhook",
    "rollout",
    "rollout_evaluation",
)
PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic-core",
    "onnxruntime",
    "numba",
    "scikit-learn",
    "numpy",
    "pandas",
    "mlflow",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: seconds, tiny sizes")
    p.add_argument("--duration", type=float, help="seconds measured per load (default 15)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each load (default 3)")
    p.add_argument("--connections", type=int, default=16, help="concurrent connections")
    p.add_argument(
        "--skip",
        default="",
        help=f"comma-separated servers ({','.join(SERVERS)}) or sections ({','.join(SECTIONS)})",
    )
    p.add_argument("--bundle", type=Path, default=ROOT / "artifacts", help="model bundle dir")
    p.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    p.add_argument(
        "--model-uri", help="for mlflow models serve (default: the bundle's registered version)"
    )
    p.add_argument("--config", type=Path, default=ROOT / "config.yaml", help="training config")
    p.add_argument("--train-rows", type=int, help="rows for the training time (default 50000)")
    p.add_argument("--drift-rows", help="comma-separated row counts (default 100000,1000000)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results dir")
    p.add_argument("--md", type=Path, default=ROOT / "bench" / "RESULTS.md", help="report path")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to cores")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    duration = args.duration if args.duration is not None else (1.0 if quick else 15.0)
    warmup = args.warmup if args.warmup is not None else (0.0 if quick else 3.0)
    drift_rows = args.drift_rows or ("5000,20000" if quick else "100000,1000000")
    return {
        "quick": quick,
        "duration_s": duration,
        "warmup_s": warmup,
        "connections": args.connections,
        "health_connections": 1,
        "batch_connections": 4,
        "batch_sizes": [100, 1000],
        "light_connections": 1,
        "explain_batch_rows": 100,
        "explain_inprocess_sizes": [1, 100],
        "explain_inprocess_repeats": {"1": 20, "100": 3} if quick else {"1": 300, "100": 20},
        "inprocess_sizes": [1, 1000],
        "inprocess_repeats": {"1": 20, "1000": 3} if quick else {"1": 500, "1000": 30},
        "parity_rows": 2000 if quick else 20000,
        "train_rows": args.train_rows or (1000 if quick else 50_000),
        "drift_rows": [int(x) for x in drift_rows.split(",") if x.strip()],
        "results_name": "latest.json",
    }


def _cpus(no_pin: bool) -> tuple[int | None, int | None, str]:
    """(server core, wrk core, description): one core each when there are two or more."""
    cores = sorted(os.sched_getaffinity(0))
    if no_pin or len(cores) < 2 or shutil.which("taskset") is None:
        return None, None, "off (server, wrk and everything else share the cores)"
    return cores[1], cores[0], f"on: server on core {cores[1]}, wrk on core {cores[0]} (taskset)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return kb / 1024 / 1024


def _wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "wrk (not found)"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else "wrk"


def machine(pinning: str, bundle: ModelBundle) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    params = bundle.metadata.get("params", {})
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "wrk": _wrk_version().split(" [")[0],
        "pinning": pinning,
        "loadavg_start": os.getloadavg()[0],
        "model": f"{bundle.name} v{bundle.version} ({params.get('model.type')}, "
        f"{params.get('model.n_estimators')} trees, max_depth {params.get('model.max_depth')})",
    }


def _load(bundle_dir: Path) -> ModelBundle:
    try:
        return load_bundle(bundle_dir)
    except BundleError as exc:
        raise SystemExit(
            f"bench: {exc}\nTrain and promote the default model first: make train promote "
            "(train.py writes candidates/, promote_model.py fills artifacts/), or pass --bundle DIR"
        ) from None


def _http_config(args: argparse.Namespace, settings: dict[str, Any]) -> http.HttpConfig:
    server_cpu, load_cpu, _ = _cpus(args.no_pin)
    return http.HttpConfig(
        duration_s=settings["duration_s"],
        warmup_s=settings["warmup_s"],
        connections=settings["connections"],
        health_connections=settings["health_connections"],
        batch_connections=settings["batch_connections"],
        batch_sizes=tuple(settings["batch_sizes"]),
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        light_connections=settings["light_connections"],
        explain_batch_rows=settings["explain_batch_rows"],
    )


def _customers(bundle: ModelBundle) -> list[dict[str, Any]]:
    # only the features: the API refuses unknown fields (the target column among them)
    customers: list[dict[str, Any]] = (
        generate_customers(200, seed=3).dropna()[bundle.schema.names].to_dict("records")
    )
    return customers


def run_http(
    args: argparse.Namespace,
    settings: dict[str, Any],
    bundle: ModelBundle,
    skip: set[str],
    work: Path,
) -> dict[str, Any]:
    cfg = _http_config(args, settings)
    types = {spec.name: datatype_of(spec) for spec in bundle.schema.features}
    bodies = http.Bodies(work, _customers(bundle), v2_model=bundle.name, v2_types=types)
    model_uri = args.model_uri or f"models:/{bundle.name}/{bundle.version}"
    sections = {s for s in SECTIONS if s not in skip}
    servers: dict[str, Any] = {}
    for spec in http.server_specs(bundle.directory, model_uri, args.tracking_uri, work):
        if spec.name in skip:
            continue
        servers[spec.name] = http.measure_server(spec, bodies, cfg, work, sections)
    return {"servers": servers, "mlflow_model_uri": model_uri}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SERVERS) - set(SECTIONS)
    if unknown:
        raise SystemExit(
            f"bench: --skip {','.join(sorted(unknown))}: unknown; choose from "
            f"{','.join(SERVERS + SECTIONS)}"
        )
    bundle = _load(args.bundle)
    _, _, pinning = _cpus(args.no_pin)
    results: dict[str, Any] = {
        "schema_version": 1,
        "meta": machine(pinning, bundle),
        "config": {**settings, "skipped": sorted(skip)},
    }
    with tempfile.TemporaryDirectory(prefix="churn-bench-") as tmp:
        work = Path(tmp)
        results["http"] = run_http(args, settings, bundle, skip, work)
        if "rollout" not in skip:
            from bench import rollout

            http.say("progressive delivery: /predict and /predict/batch, off/shadow/canary/routing")
            results["rollout"] = rollout.measure(
                args.config,
                min(settings["train_rows"], 20_000),
                work,
                _http_config(args, settings),
                _customers(bundle),
                rounds=1 if settings["quick"] else 3,  # a few % targets: more rounds, best kept
                counted={"predict": 2, "batch": 1}
                if settings["quick"]
                else {"predict": 16, "batch": 4},
            )
        if "inprocess" not in skip:
            http.say("in-process inference: compiled forest, ONNX Runtime, sklearn")
            repeats = {int(k): v for k, v in settings["inprocess_repeats"].items()}
            results["inprocess"] = inprocess.inference(
                bundle, tuple(settings["inprocess_sizes"]), repeats, settings["parity_rows"]
            )
        if "explain" not in skip:
            http.say("in-process explanations (churn.explain) vs the served prediction")
            repeats = {int(k): v for k, v in settings["explain_inprocess_repeats"].items()}
            results["explain_inprocess"] = inprocess.explanations(
                bundle, tuple(settings["explain_inprocess_sizes"]), repeats
            )
        if "training" not in skip:
            http.say(f"training on {settings['train_rows']:,} rows with {args.config}")
            results["training"] = inprocess.training(
                args.config, settings["train_rows"], work / "training"
            )
        if "drift" not in skip:
            http.say(f"drift check on {settings['drift_rows']} rows × 7 features")
            results["drift"] = inprocess.drift(tuple(settings["drift_rows"]))
        if "performance" not in skip:
            from bench.performance import performance

            rows = tuple(settings["drift_rows"])
            http.say(f"label-free performance estimate and segments on {rows} predictions")
            results["performance"] = performance(rows)
        if "webhook" not in skip:
            from bench.webhook import alias_move, quick_settings

            http.say("alias move -> every worker on the new version: webhook vs polling")
            results["webhook"] = alias_move(
                bundle.directory, work / "webhook", **quick_settings(settings["quick"])
            )
        if "rollout_evaluation" not in skip:
            from bench.rollout_evaluation import rollout_evaluation

            rows = tuple(settings["drift_rows"])
            boot = 2000 if args.quick else 10_000
            http.say(f"rollout evidence on {rows} labelled pairs; bootstrap on {boot:,} pairs")
            results["rollout_evaluation"] = rollout_evaluation(rows, boot)
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "latest.json"
    write_report(results, args.out, args.md)  # adds ratios and targets
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    for t in targets(results):
        value = "–" if t["value"] is None else f"{t['value']:,.2f}{t['unit']}"
        print(f"{t['mark']:>5}  {t['target']}: {value}")
    print(f"results: {path}\nreport:  {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
