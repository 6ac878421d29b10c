"""Benchmark of nightly scoring on Spark: ``python -m bench.spark_batch [--rows N]``.

Three ways to score the same generated customers on this machine:

* ``score_batch`` end to end with ``local[2]``: read Parquet, validate, score with the API's
  backend, drift statistics, write the date partition (``churn.batch.job.run_batch``);
* ``mlflow.pyfunc.spark_udf`` (``env_manager="local"``) on the same pipeline, the same rows
  (a subset: it is slow) and the same two cores, reading and writing Parquet likewise;
* single-process pandas: read Parquet, the very same validation and scorer, write Parquet,

and reports rows/s and the ratios. ``make bench`` runs it after the serving benchmarks; the
targets (issue 15): 10,000,000 rows end to end in < 120 s, >= 10x spark_udf's rows/s.
Writes ``bench/results/spark_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churn.batch.job import BatchJob, prepare_model, run_batch, spark_session
from churn.batch.scoring import Scorer
from churn.datagen import generate_customers
from churn.pipeline import MISSING_CATEGORY

ROOT = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 1_000_000
TARGET_SECONDS, TARGET_RATIO = 120.0, 10.0


def write_customers(directory: Path, rows: int, seed: int = 0) -> list[Path]:
    """``rows`` generated customers with an id, as Parquet files of at most 1M rows each."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        frame = generate_customers(n, seed=seed + i).drop(columns=["churned"])
        frame.insert(0, "customer_id", np.arange(start, start + n, dtype=np.int64))
        path = directory / f"part-{i:05d}.parquet"
        frame.to_parquet(path, index=False, row_group_size=250_000)
        files.append(path)
    return files


def bench_score_batch(spark: Any, source: Path, out: Path, bundle: Path, rows: int) -> float:
    job = BatchJob(
        input=str(source),
        output=str(out),
        model=str(bundle),
        scoring_date=date(2026, 1, 1),
        max_invalid_share=1.0,
    )
    started = time.perf_counter()
    result = run_batch(spark, job)
    seconds = time.perf_counter() - started
    if result.rows != rows:
        raise RuntimeError(f"scored {result.rows} rows, expected {rows}")
    return seconds


def bench_score_only(spark: Any, source: Path, out: Path, bundle: Path) -> tuple[float, int]:
    """Our scoring alone, shaped like the spark_udf run: read, score (mapInPandas), write."""
    from churn.batch.job import score_frame

    model = prepare_model(BatchJob(input=str(source), output=str(out), model=str(bundle)))
    frame = spark.read.parquet(str(source))
    scored = score_frame(frame, model, ["customer_id"]).select("customer_id", "churn_probability")
    started = time.perf_counter()
    scored.write.mode("overwrite").parquet(str(out))
    seconds = time.perf_counter() - started
    return seconds, int(spark.read.parquet(str(out)).count())


def bench_spark_udf(spark: Any, source: Path, out: Path, bundle: Path) -> tuple[float, int]:
    """mlflow.pyfunc.spark_udf on the bundle's pipeline, probabilities written as Parquet."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from churn.bundle import load_bundle

    loaded = load_bundle(bundle)
    model_dir = out.parent / "pyfunc-model"
    shutil.rmtree(model_dir, ignore_errors=True)
    mlflow.sklearn.save_model(
        loaded.pipeline,
        str(model_dir),
        pyfunc_predict_fn="predict_proba",
        serialization_format="cloudpickle",
    )
    udf = mlflow.pyfunc.spark_udf(
        spark, str(model_dir), result_type=T.ArrayType(T.DoubleType()), env_manager="local"
    )
    # sklearn's encoder refuses None among strings: give it the imputer's own fill value
    frame = spark.read.parquet(str(source)).fillna(MISSING_CATEGORY, loaded.schema.categorical)
    names = loaded.schema.names
    scored = frame.select(
        "customer_id", udf(F.struct(*[F.col(n) for n in names]))[1].alias("churn_probability")
    )
    started = time.perf_counter()
    scored.write.mode("overwrite").parquet(str(out))
    seconds = time.perf_counter() - started
    return seconds, int(spark.read.parquet(str(out)).count())


def bench_pandas(source: Path, out: Path, bundle: Path) -> tuple[float, int]:
    """One process: read, the same validation and scorer as the executors, write."""
    model = prepare_model(BatchJob(input=str(source), output=str(out), model=str(bundle)))
    scorer = Scorer.from_bundle(model.bundle, model.payload.backend, allow_missing=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = 0
    for i, path in enumerate(sorted(source.glob("*.parquet"))):
        frame = pd.read_parquet(path)
        scorer.score(frame, ["customer_id"]).to_parquet(out / f"part-{i:05d}.parquet")
        rows += len(frame)
    return time.perf_counter() - started, rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-spark-", dir=args.tmp))
    try:
        full, subset = work / "customers", work / "subset"
        made = time.perf_counter()
        write_customers(full, args.rows)
        write_customers(subset, args.subset_rows, seed=1000)
        generated = time.perf_counter() - made
        spark = spark_session("local[2]", {"spark.sql.shuffle.partitions": "4"}, "bench")
        try:
            # warm-up: JVM, Python workers, the forest's JIT compilation
            bench_score_batch(spark, subset, work / "warm", args.bundle, args.subset_rows)
            ours_full = bench_score_batch(spark, full, work / "scores", args.bundle, args.rows)
            ours_subset = bench_score_batch(
                spark, subset, work / "scores-subset", args.bundle, args.subset_rows
            )
            only_seconds, only_rows = bench_score_only(spark, subset, work / "only", args.bundle)
            udf_seconds, udf_rows = bench_spark_udf(spark, subset, work / "udf", args.bundle)
        finally:
            spark.stop()
        pandas_seconds, pandas_rows = bench_pandas(subset, work / "pandas", args.bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {
        "score_batch_full": args.rows / ours_full,
        "score_batch_subset": args.subset_rows / ours_subset,
        "score_only_subset": only_rows / only_seconds,
        "spark_udf_subset": udf_rows / udf_seconds,
        "pandas_subset": pandas_rows / pandas_seconds,
    }
    return {
        "rows": args.rows,
        "subset_rows": args.subset_rows,
        "bundle": str(args.bundle),
        "generate_seconds": generated,
        "seconds": {
            "score_batch_full": ours_full,
            "score_batch_subset": ours_subset,
            "score_only_subset": only_seconds,
            "spark_udf_subset": udf_seconds,
            "pandas_subset": pandas_seconds,
        },
        "rows_per_second": rate,
        "ratios": {
            "score_batch_vs_spark_udf": rate["score_batch_subset"] / rate["spark_udf_subset"],
            "scoring_alone_vs_spark_udf": rate["score_only_subset"] / rate["spark_udf_subset"],
            "score_batch_vs_pandas": rate["score_batch_full"] / rate["pandas_subset"],
        },
        "targets": {
            "full_run_seconds": {
                "target": f"< {TARGET_SECONDS:g} s for 10M rows",
                "value": ours_full * 10_000_000 / args.rows,
            },
            "vs_spark_udf": {
                "target": f">= {TARGET_RATIO:g}x",
                "value": rate["score_batch_subset"] / rate["spark_udf_subset"],
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="customers end to end")
    p.add_argument("--subset-rows", type=int, default=200_000, help="rows for spark_udf/pandas")
    p.add_argument("--bundle", type=Path, default=ROOT / "artifacts", help="model bundle dir")
    p.add_argument("--tmp", type=Path, help="scratch directory (default: system temp)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/spark_batch.json")
    args = p.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result["rows_per_second"].items():
        print(f"{name:>22}: {value:12,.0f} rows/s  ({result['seconds'][name]:.1f} s)")
    for name, value in result["ratios"].items():
        print(f"{name:>26}: {value:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
