"""The prediction log: batched writes, feedback join, drops when full, PostgreSQL and outages."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.ids import RandomHex
from app.main import create_app
from churn.prediction_log import (
    PredictionBatch,
    PredictionLogWriter,
    _statement_groups,
    create_tables,
    make_engine,
    prediction_exists,
    read_predictions,
    record_feedback,
    write_batches,
)
from churn.prediction_log.writer import PREDICTIONS_PER_STATEMENT, ROWS_PER_STATEMENT
from tests.api_support import (
    CUSTOMER,
    TcpProxy,
    make_settings,
    metric_value,
    postgres_database,
    wait_until,
)
from tests.conftest import TrainedModel

_ids = RandomHex()


def batch(rows: int, version: str = "3", batch_id: str | None = None) -> PredictionBatch:
    return PredictionBatch(
        batch_id=batch_id or _ids.batch_id(),
        created_at=time.time(),
        model_version=version,
        columns={"tenure": [float(i) for i in range(rows)], "contract_type": ["One year"] * rows},
        probabilities=[0.1 * (i % 10) for i in range(rows)],
        tiers=["LOW"] * rows,
    )


def test_writer_round_trip_with_feedback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    writer = PredictionLogWriter(engine, batch_size=3, flush_interval=0.02)
    assert writer.prepare()
    writer.start()
    first, second = batch(2), batch(1, version="4")
    a, b = first.ids
    (c,) = second.ids
    writer.enqueue(first)
    writer.enqueue(second)
    assert writer.is_pending(a) or writer.written
    writer.close()
    assert writer.written == 3
    assert not writer.is_pending(a)
    assert prediction_exists(engine, b) and prediction_exists(engine, c)
    assert not prediction_exists(engine, first.batch_id + "0002")  # past the batch's end
    assert not prediction_exists(engine, "not-an-id")
    record_feedback(engine, b, True)
    record_feedback(engine, c, False)
    record_feedback(engine, c, True)  # a correction replaces the earlier outcome
    frame = read_predictions(url)
    assert list(frame.columns) == [
        "prediction_id",
        "created_at",
        "model_version",
        "tenure",
        "contract_type",
        "probability",
        "risk_tier",
        "outcome",
    ]
    assert list(frame["prediction_id"]) == [a, b, c]
    by_id = frame.set_index("prediction_id")
    assert np.isnan(by_id.loc[a, "outcome"])
    assert by_id.loc[b, "outcome"] == 1.0
    assert by_id.loc[c, "outcome"] == 1.0
    assert by_id.loc[c, "model_version"] == "4"
    assert by_id.loc[b, "tenure"] == 1.0 and by_id.loc[b, "probability"] == 0.1
    assert str(frame["created_at"].dt.tz) == "UTC"
    future = datetime.now(UTC) + timedelta(hours=1)
    assert read_predictions(url, since=future).empty
    assert len(read_predictions(url, since=datetime.now(UTC) - timedelta(hours=1))) == 3


def test_batches_with_different_features_line_up(tmp_path: Path) -> None:
    """A model change may add or drop a feature: every row keeps its own values."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    create_tables(engine)
    old = batch(2)
    new = PredictionBatch(
        batch_id=_ids.batch_id(),
        created_at=time.time() + 1,
        model_version="5",
        columns={"contract_type": ["Two year", None], "num_products": [3, None]},
        probabilities=[0.5, 0.25],
        tiers=["MEDIUM", "LOW"],
    )
    write_batches(engine, [old, new])
    frame = read_predictions(url)
    assert list(frame.columns[3:6]) == ["tenure", "contract_type", "num_products"]
    assert frame["tenure"].tolist()[:2] == [0.0, 1.0] and frame["tenure"][2:].isna().all()
    assert frame["contract_type"].tolist()[:3] == ["One year", "One year", "Two year"]
    assert frame["num_products"][:2].isna().all() and frame["num_products"][2] == 3
    assert frame["risk_tier"].tolist() == ["LOW", "LOW", "MEDIUM", "LOW"]


def test_read_predictions_of_an_empty_store(tmp_path: Path) -> None:
    frame = read_predictions(f"sqlite:///{tmp_path / 'none.db'}")
    assert frame.empty
    assert "outcome" in frame.columns


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    writer = PredictionLogWriter(
        make_engine(f"sqlite:///{tmp_path / 'log.db'}"),
        queue_size=5,
        on_drop=lambda reason, n: drops.update({reason: n}),
    )  # not started: nothing drains the queue
    assert writer.enqueue(batch(4))
    assert not writer.enqueue(batch(2))
    assert drops == {"queue_full": 2}
    writer.close()
    assert drops["shutdown"] == 4


def test_duplicate_ids_are_dropped_not_retried_forever(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    writer = PredictionLogWriter(
        engine, flush_interval=0.02, on_drop=lambda reason, n: drops.update({reason: n})
    )
    writer.start()
    same = _ids.batch_id()
    writer.enqueue(batch(1, batch_id=same))
    assert wait_until(lambda: writer.written == 1)
    writer.enqueue(batch(1, batch_id=same))
    assert wait_until(lambda: drops["write_error"] == 1)
    writer.close()


@pytest.mark.integration
def test_postgres_store(trained_model: TrainedModel, tmp_path: Path) -> None:
    with postgres_database() as url:
        settings = make_settings(trained_model.model_path, tmp_path, database_url=url)
        with TestClient(create_app(settings)) as client:
            ids = [client.post("/predict", json=CUSTOMER).json()["prediction_id"] for _ in range(5)]
            assert wait_until(lambda: len(read_predictions(url)) == 5)
            response = client.post("/feedback", json={"prediction_id": ids[0], "outcome": False})
            assert response.status_code == 200
        frame = read_predictions(url).set_index("prediction_id")
        assert frame.loc[ids[0], "outcome"] == 0.0
        assert frame["outcome"].isna().sum() == 4
        assert frame.loc[ids[1], "num_products"] == CUSTOMER["num_products"]
        create_tables(make_engine(url))  # idempotent


@pytest.mark.integration
@pytest.mark.slow
def test_store_outage_mid_traffic(trained_model: TrainedModel, tmp_path: Path) -> None:
    """Predictions keep answering 200 while the store is away; writing resumes after."""
    with postgres_database() as url:
        proxy = TcpProxy(upstream_port=5432)
        proxy.start()
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        settings = make_settings(
            trained_model.model_path,
            tmp_path,
            database_url=proxied,
            prediction_log_queue_size=20,
            prediction_log_batch_size=5,
        )
        try:
            with TestClient(create_app(settings)) as client:

                def predict(n: int) -> list[str]:
                    answers = [client.post("/predict", json=CUSTOMER) for _ in range(n)]
                    assert {a.status_code for a in answers} == {200}
                    return [a.json()["prediction_id"] for a in answers]

                predict(10)
                assert wait_until(lambda: len(read_predictions(url)) == 10)
                proxy.stop()
                predict(60)  # more than the queue holds while the store is away
                dropped = metric_value(
                    client.get("/metrics").text, "prediction_log_dropped_total", reason="queue_full"
                )
                assert dropped > 0
                proxy.start()
                # What was queued during the outage is written once the store is back ...
                assert wait_until(lambda: len(read_predictions(url)) > 10, timeout=40)
                assert wait_until(lambda: not client.app.state.service.log_writer.queued)
                after = predict(5)  # ... and so is new traffic.
                assert wait_until(
                    lambda: set(after) <= set(read_predictions(url)["prediction_id"]),
                    timeout=40,
                )
            assert len(read_predictions(url)) + dropped >= 75 - 1
        finally:
            proxy.stop()


def test_feedback_needs_the_log(trained_model: TrainedModel, tmp_path: Path) -> None:
    settings = make_settings(trained_model.model_path, tmp_path, prediction_log_enabled=False)
    with TestClient(create_app(settings)) as client:
        pid = client.post("/predict", json=CUSTOMER).json()["prediction_id"]
        response = client.post("/feedback", json={"prediction_id": pid, "outcome": True})
        assert response.status_code == 503
        assert "PREDICTION_LOG_ENABLED" in json.dumps(response.json())


def test_sqlite_statements_group_small_and_large_batches(tmp_path: Path) -> None:
    """Many single predictions and a few large batches, grouped into multi-row statements
    (at most 25 rows or 10,000 predictions each): every prediction comes back once."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    create_tables(engine)
    batches = [batch(1) for _ in range(60)] + [batch(6000) for _ in range(3)] + [batch(2)]
    groups = list(_statement_groups(batches))
    assert all(len(g) <= ROWS_PER_STATEMENT for g in groups)
    assert all(sum(map(len, g)) <= PREDICTIONS_PER_STATEMENT or len(g) == 1 for g in groups)
    assert len(groups) == 5  # 25 + 25 singles; 10 singles and a 6,000; a 6,000; a 6,000 and 2
    assert [b for g in groups for b in g] == batches
    write_batches(engine, batches)
    frame = read_predictions(url)
    assert len(frame) == 60 + 18000 + 2
    assert set(frame["prediction_id"]) == {pid for b in batches for pid in b.ids}
    assert frame["probability"].notna().all() and set(frame["risk_tier"]) == {"LOW"}


def test_one_write_takes_every_queued_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests larger than batch_size (1,000-row batches) are written many per write, not
    one per write: a write costs the thread turns at the GIL whatever its size, so one per
    write fell behind 1,000-row traffic on a busy core and dropped records."""
    import churn.prediction_log.writer as writer_module

    writes: list[int] = []
    real = writer_module.write_log

    def counted(engine: Any, batches: Any) -> None:
        writes.append(len(batches))
        real(engine, batches)

    monkeypatch.setattr(writer_module, "write_log", counted)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(make_engine(url), batch_size=500, flush_interval=0.02)
    assert writer.prepare()
    for _ in range(6):
        assert writer.enqueue(batch(1000))  # each alone over batch_size
    writer.start()
    writer.close()
    assert writes == [6]
    assert writer.written == 6000 and not writer.dropped
    assert len(read_predictions(url)) == 6000


def _locked(url: str) -> Any:
    """A second connection holding SQLite's write lock (BEGIN EXCLUSIVE) until closed."""
    import sqlite3

    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_close_with_a_locked_store_counts_every_row(tmp_path: Path) -> None:
    """The batch being written when close() starts is counted too, and close() waits no
    longer than its budget plus one write timeout (the two agree: one setting)."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    drops: Counter[str] = Counter()
    writer = PredictionLogWriter(
        make_engine(url, timeout=0.5),
        batch_size=3,
        flush_interval=0.02,
        on_drop=lambda reason, n: drops.update({reason: n}),
        write_timeout=0.5,
    )
    assert writer.prepare()
    writer.start()
    writer.enqueue(batch(2))
    assert wait_until(lambda: writer.written == 2)
    holder = _locked(url)
    try:
        sent = [batch(n) for n in (1, 2, 3, 4, 5)]
        for b in sent:
            assert writer.enqueue(b)
        time.sleep(0.2)  # the first write is now waiting for the lock
        started = time.monotonic()
        writer.close()
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert writer.written == 2
    assert drops == {"shutdown": 15}
    assert writer.dropped == {"shutdown": 15}
    assert waited < 0.5 + 0.5 + 1.0
    assert not writer.enqueue(batch(3))  # after close: counted, not queued and lost
    assert drops == {"shutdown": 18}
    assert len(read_predictions(url)) == 2


def test_close_writes_what_is_queued_when_the_store_is_fine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(make_engine(url), batch_size=2, flush_interval=10.0)
    writer.start()
    for n in (1, 2, 3):
        writer.enqueue(batch(n))
    writer.close()
    assert writer.written == 6 and writer.dropped == {}
    assert len(read_predictions(url)) == 6


def test_failed_prediction_counts_as_error(trained_model: TrainedModel, tmp_path: Path) -> None:
    """predictions_total{outcome="error"}: a validated request whose prediction failed (the
    inference thread is stopped, as at shutdown) answers 500 and is counted."""
    settings = make_settings(trained_model.model_path, tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/predict", json=CUSTOMER).status_code == 200
        client.post("/predict/batch", json={"customers": [CUSTOMER, CUSTOMER]})
        client.app.state.service.batcher.stop()
        failed = client.post("/predict/batch", json={"customers": [CUSTOMER] * 3})
        assert failed.status_code == 500
        assert "inference" not in failed.text  # no exception text to the client
        text = client.get("/metrics").text
    assert metric_value(text, "predictions_total", outcome="success") == 3
    assert metric_value(text, "predictions_total", outcome="error") == 3
    churn = metric_value(text, "prediction_decisions_total", decision="churn")
    no_churn = metric_value(text, "prediction_decisions_total", decision="no_churn")
    assert churn + no_churn == 3


def test_disabled_log_counts_served_predictions_as_dropped(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    settings = make_settings(trained_model.model_path, tmp_path, prediction_log_enabled=False)
    with TestClient(create_app(settings)) as client:
        client.post("/predict", json=CUSTOMER)
        client.post("/predict/batch", json={"customers": [CUSTOMER] * 4})
        text = client.get("/metrics").text
    assert metric_value(text, "prediction_log_dropped_total", reason="disabled") == 5
