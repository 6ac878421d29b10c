"""Serving internals that the API's speed rests on: bulk random ids, batched log writes,
the micro-batcher's hand-over."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from app.batcher import MicroBatcher, Row
from app.ids import RandomHex
from app.logging import (
    JsonFormatter,
    LoopBatchingHandler,
    StructuredLogger,
    configure_logging,
    request_id_var,
)
from app.metrics import Metrics
from churn.prediction_log import (
    BATCH_ID_CHARS,
    MAX_BATCH_ROWS,
    prediction_ids,
    split_prediction_id,
)
from tests.api_support import metric_value


def test_random_hex_ids_are_unique_hex_across_refills() -> None:
    source = RandomHex(chunk_bytes=64)  # refills every four 32-character ids
    ids = [i for _ in range(50) for i in source.ids(3)] + [source.take(16) for _ in range(20)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) in (16, 32) and int(i, 16) >= 0 for i in ids)
    assert len(source.take(1000)) == 1000  # more than one pool at once


def test_prediction_ids_sort_by_time_name_their_batch_and_stay_unique() -> None:
    source = RandomHex(chunk_bytes=64)
    first = [source.batch_id() for _ in range(50)]
    time.sleep(0.002)
    later = [source.batch_id() for _ in range(3)]
    assert len(set(first + later)) == 53
    assert all(len(b) == BATCH_ID_CHARS and int(b, 16) >= 0 for b in first + later)
    assert max(first) < min(later)
    ids = prediction_ids(later[0], 300)
    assert ids == sorted(ids) and len(set(ids)) == 300
    assert [split_prediction_id(i) for i in (ids[0], ids[-1])] == [(later[0], 0), (later[0], 299)]
    assert max(prediction_ids(first[-1], MAX_BATCH_ROWS)) < ids[0]
    for bad in ("", ids[0][:-1], "F" * 32, ids[0][:-1] + "g", ids[0] + "0"):
        assert split_prediction_id(bad) is None
    with pytest.raises(ValueError, match="65,536"):
        prediction_ids(later[0], MAX_BATCH_ROWS + 1)


def _handler() -> tuple[LoopBatchingHandler, io.StringIO, logging.Logger]:
    stream = io.StringIO()
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test.batching.{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return handler, stream, log


def test_log_lines_of_one_loop_iteration_are_written_together_in_order() -> None:
    _, stream, log = _handler()

    async def burst() -> str:
        for i in range(5):
            log.info("line %d", i, extra={"n": i})
        written_during = stream.getvalue()
        await asyncio.sleep(0)  # the end of the iteration: the flush runs
        return written_during

    assert asyncio.run(burst()) == ""
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2, 3, 4]
    log.info("outside a loop")  # written at once
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "outside a loop"


class _Doubler:
    def __init__(self) -> None:
        self.calls = 0

    def predict_rows(self, rows: list[Row]) -> np.ndarray:
        self.calls += 1
        return np.asarray([2.0 * r[0] for r in rows])


class _SlowDoubler(_Doubler):
    def predict_rows(self, rows: list[Row]) -> np.ndarray:
        time.sleep(0.05)  # the loop would run the first model's answers meanwhile
        return super().predict_rows(rows)


def test_requests_of_one_iteration_share_one_model_call() -> None:
    batcher = MicroBatcher()
    batcher.start()
    model = _Doubler()

    async def many() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict(model, [(i,), (i + 1,)]) for i in range(20)))

    try:
        results = asyncio.run(many())
    finally:
        batcher.stop()
    assert [r.tolist() for r in results] == [[2.0 * i, 2.0 * (i + 1)] for i in range(20)]
    assert model.calls == 1
    assert batcher.rows == 40


def test_two_models_jobs_of_one_iteration_are_answered_together() -> None:
    """A canary's champion and challenger jobs: one call per model, and every answer in one
    hand-over to the loop, so the requests answered together come back together (answering
    each model's as its call ended split the traffic into ever smaller micro-batches)."""
    batcher = MicroBatcher()
    batcher.start()
    champion, challenger = _SlowDoubler(), _Doubler()

    async def both() -> tuple[list[float], list[float], bool]:
        mine = batcher.submit(challenger, [(3,)])  # its call runs first
        theirs = batcher.submit(champion, [(1,), (2,)])
        pair = batcher.submit(champion, [(3,)])
        first = await mine
        together = theirs.done() and pair.done()  # resolved in the same loop callback
        return first.tolist(), (await theirs).tolist() + (await pair).tolist(), together

    try:
        mine, theirs, together = asyncio.run(both())
    finally:
        batcher.stop()
    assert mine == [6.0] and theirs == [2.0, 4.0, 6.0]
    assert together
    assert (champion.calls, challenger.calls) == (1, 1)  # the pair joined the champion's call


def test_access_lines_written_directly_match_the_formatter() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    fields = {"method": "POST", "route": "/predict", "status": 200, "latency_ms": 1.5}
    try:
        configure_logging("INFO")
        stream = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, LoopBatchingHandler)
        handler.setStream(stream)
        access = StructuredLogger(logging.getLogger("app.access"))
        token = request_id_var.set("req-7")
        try:
            access.log(logging.INFO, "request", {**fields, "model_version": "2"})
            handler.addFilter(lambda record: True)  # a filter: the direct path must step aside
            access.log(logging.INFO, "request", {**fields, "model_version": "2"})
        finally:
            request_id_var.reset(token)
        direct, through_logging = (json.loads(line) for line in stream.getvalue().splitlines())
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    assert direct.pop("time") and through_logging.pop("time")
    assert list(direct.items()) == list(through_logging.items())
    assert direct["request_id"] == "req-7"
    assert direct["logger"] == "app.access"


def test_metrics_of_one_loop_iteration_are_applied_together() -> None:
    metrics = Metrics()

    def count(name: str, **labels: str) -> float:
        return metric_value(generate_latest(metrics.registry).decode(), name, **labels)

    async def burst() -> float:
        for i in range(20):
            metrics.observe_request("POST", "/predict", 200, 0.001 * i)
            metrics.observe_predictions([0.1, 0.9], [False, True], 1, 0.002)
        before_flush = count("predictions_total")
        await asyncio.sleep(0)
        return before_flush

    assert asyncio.run(burst()) == 0
    assert count("http_requests_total", route="/predict", status="200") == 20
    assert count("http_request_duration_seconds_count", route="/predict") == 20
    assert count("predictions_total", outcome="success") == 40
    assert count("prediction_decisions_total", decision="churn") == 20
    assert count("prediction_decisions_total", decision="no_churn") == 20
    assert count("high_risk_predictions_total") == 20
    assert count("prediction_probability_count") == 40
    assert count("prediction_latency_seconds_count") == 20
    metrics.observe_request("GET", "/model", 200, 0.01)  # no running loop: applied at once
    assert count("http_requests_total", route="/model") == 1
