"""The API side of progressive delivery, in process: guardrail rules, routing, shadow scores
through the log writer and spool, and the service's canary decisions (a challenger that fails
falls back to the champion and counts as an error; enough errors roll the canary back).

The real registry and two workers are in tests/test_api_rollout.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app
from app.rollout import (
    Challenger,
    Guardrails,
    GuardrailWindow,
    WindowStats,
    challenger_rows,
    judge,
    routing_keys,
    schema_difference,
)
from churn.prediction_log import (
    PredictionBatch,
    PredictionLogWriter,
    ShadowBatch,
    Spool,
    make_engine,
    orphans,
)
from churn.prediction_log.spool import decode_record, insert_missing
from churn.rollout import CANARY, RolloutError, RolloutRecord
from tests.api_support import CUSTOMER, make_settings, metric_value, wait_until
from tests.conftest import TrainedModel

# ---------------------------------------------------------------------------- guardrails


def test_guardrails_judge_nothing_before_min_requests_then_each_bound() -> None:
    bounds = Guardrails(min_requests=100, max_error_ratio=0.02, max_p95_latency_ms=50)
    fine = WindowStats(challenger_rows=99, challenger_errors=0, p95_latency_ms=10)
    assert judge(fine, bounds) is None
    # 10 errors of 99: far over the ratio, but fewer than min_requests answers
    assert judge(WindowStats(challenger_rows=80, challenger_errors=10), bounds) is None
    assert judge(WindowStats(challenger_rows=95, challenger_errors=5), bounds) == "error_ratio"
    assert judge(WindowStats(challenger_rows=98, challenger_errors=2), bounds) is None
    slow = WindowStats(challenger_rows=100, p95_latency_ms=50.1)
    assert judge(slow, bounds) == "latency"
    assert judge(slow._replace(p95_latency_ms=50.0), bounds) is None
    risky = WindowStats(
        challenger_rows=100, challenger_high=40, champion_rows=1000, champion_high=200
    )
    assert risky.high_risk_delta == pytest.approx(0.2)
    assert judge(risky, bounds) == "high_risk"
    assert judge(risky._replace(challenger_high=30), bounds) is None  # delta 0.10
    # no champion answers in the window: the delta is not judged
    assert judge(risky._replace(champion_rows=0, champion_high=0), bounds) is None


def test_guardrails_come_from_the_record_and_refuse_unusable_bounds() -> None:
    assert Guardrails.from_record({}) == Guardrails()
    bounds = Guardrails.from_record({"min_requests": 50, "max_p95_latency_ms": 100})
    assert (bounds.min_requests, bounds.max_p95_latency_ms) == (50, 100.0)
    for bad in ({"max_error_ratio": "0.1"}, {"min_requests": -1}, {"max_p95_latency_ms": True}):
        with pytest.raises(RolloutError, match="guardrail"):
            Guardrails.from_record(bad)


def test_the_window_forgets_answers_older_than_its_length() -> None:
    window = GuardrailWindow(window_seconds=10)
    window.add(True, rows=5, high=1, errors=1, seconds=0.002, now=100.0)
    window.add(False, rows=20, high=2, errors=0, seconds=0.001, now=105.0)
    window.add(True, rows=5, high=0, errors=0, seconds=0.004, now=109.0)
    stats = window.stats(now=109.0)
    assert (stats.challenger_rows, stats.challenger_errors, stats.champion_rows) == (10, 1, 20)
    # the p95 (the 4 ms call of two) to within its 5 % latency bin, never below
    assert 4.0 <= stats.p95_latency_ms <= 4.2
    later = window.stats(now=111.0)  # the first answer is out of the window
    assert (later.challenger_rows, later.challenger_errors, later.champion_rows) == (5, 0, 20)


def test_the_window_p95_is_the_95th_percentile_call_to_within_its_bin() -> None:
    import math
    import random

    def exact(latencies: list[float]) -> float:
        # the smallest latency with at least 95 % of the calls at or below it
        return sorted(latencies)[math.ceil(0.95 * len(latencies)) - 1] * 1000

    draw = random.Random(7)
    for calls in (1, 19, 20, 21, 1000):
        window = GuardrailWindow(window_seconds=10)
        # slow calls first, then fast ones a few seconds later, judged as they come: the
        # p95's bin moves up, then down; then the slow second leaves the window
        slow = [draw.lognormvariate(-3, 1.0) for _ in range(calls)]
        fast = [draw.lognormvariate(-7, 1.5) for _ in range(calls)]
        seen: list[float] = []
        for now, latencies in ((100.0, slow), (105.0, fast)):
            for k, seconds in enumerate(latencies):
                window.add(True, rows=1, high=0, errors=0, seconds=seconds, now=now)
                seen.append(seconds)
                if k % 7 == 0 or k == len(latencies) - 1:
                    p95 = window.stats(now=now).p95_latency_ms
                    assert exact(seen) <= p95 <= exact(seen) * 1.05 + 1e-9, (calls, now, k)
        p95 = window.stats(now=111.0).p95_latency_ms  # only the fast second is left
        assert exact(fast) <= p95 <= exact(fast) * 1.05 + 1e-9, calls
    assert GuardrailWindow(window_seconds=10).stats(now=1.0).p95_latency_ms == 0.0


# ---------------------------------------------------------------------------- routing


def test_canary_routing_keeps_its_share_and_only_adds_keys_when_widened() -> None:
    keys = [f"customer-{i}" for i in range(20_000)]
    at_5 = challenger_rows(keys, 0.05).picked
    at_10 = challenger_rows(keys, 0.10).picked
    assert abs(sum(at_10) / len(keys) - 0.10) < 0.01
    assert all(b for a, b in zip(at_5, at_10, strict=True) if a)  # 5 % is inside 10 %
    assert challenger_rows(keys, 0.10).picked == at_10  # sticky
    # one key alone routes as it does in a batch
    assert [challenger_rows([k], 0.10).picked[0] for k in keys[:500]] == at_10[:500]
    rows = [{"customer_id": k, "i": i} for i, k in enumerate(keys[:1000])]
    # the challenger's part the smaller (a canary) or the larger one (nearly rolled out)
    for share in (0.10, 0.90):
        split = challenger_rows(keys[:1000], share)
        assert split.few_mine == (share < 0.5)
        mine, theirs = split.parts(rows)
        assert len(mine) == split.mine_count == sum(split.picked)
        assert len(mine) + len(theirs) == 1000
        assert all(split.picked[r["i"]] for r in mine)
        assert not any(split.picked[r["i"]] for r in theirs)
        for part in (mine, theirs):  # each part in request order
            assert [r["i"] for r in part] == sorted(r["i"] for r in part)
        # merging puts each part's answers back in place, and leaves the parts as they were
        their_answers = [f"champion {r['i']}" for r in theirs]
        my_answers = [f"challenger {r['i']}" for r in mine]
        merged = split.merge(their_answers, my_answers)
        assert [a.split()[1] for a in merged] == [str(i) for i in range(1000)]
        assert [a.split()[0] == "challenger" for a in merged] == split.picked
        assert their_answers == [f"champion {r['i']}" for r in theirs]
        assert list(rows) == [{"customer_id": k, "i": i} for i, k in enumerate(keys[:1000])]


def test_a_split_batch_reads_in_request_order_and_merges_ids_only_when_read() -> None:
    from app.model import Answers, SplitAnswers

    keys = [f"customer-{i}" for i in range(200)]
    split = challenger_rows(keys, 0.10)
    mine_at = [i for i, p in enumerate(split.picked) if p]
    theirs_at = [i for i, p in enumerate(split.picked) if not p]

    def answers(at: list[int], version: str | None) -> Answers:
        return Answers(
            probabilities=[i / 1000 for i in at],
            decisions=[i % 2 == 0 for i in at],
            tiers=["HIGH" if i % 3 == 0 else "LOW" for i in at],
            role="challenger" if version else "champion",
            versions=[version] * len(at) if version else None,
        )

    split_answers = SplitAnswers(
        split,
        answers(theirs_at, None),
        [f"t{i}" for i in theirs_at],
        answers(mine_at, "2"),
        [f"m{i}" for i in mine_at],
        champion_version="1",
    )
    ids = split_answers.lazy_ids
    assert len(ids) == 200 and "ids" not in vars(split_answers)  # counted, not merged
    expected = [f"m{i}" if split.picked[i] else f"t{i}" for i in range(200)]
    assert list(ids) == expected and ids[3] == expected[3] and ids[-2:] == expected[-2:]
    assert split_answers.probabilities == [i / 1000 for i in range(200)]
    assert split_answers.versions == ["2" if p else "1" for p in split.picked]
    assert split_answers.answered_by() == ["1", "2"]


def test_batch_routing_buckets_equal_the_one_key_rule() -> None:
    from churn.rollout import routing_bucket, routing_buckets

    keys = [f"customer-{i}" for i in range(5000)] + ["", "é-ü", "x" * 500, "42", "😀"]
    assert routing_buckets(keys).tolist() == [routing_bucket(k) for k in keys]
    # keys holding the NUL that separates them inside routing_buckets, empty keys, and a lone
    # surrogate (no UTF-8 of its own: hashed by its surrogatepass bytes, key by key)
    odd = ["a\0b", "\0", "", "", "a", "a\0", "\ud800x"]
    assert routing_buckets(odd).tolist() == [routing_bucket(k) for k in odd]
    buckets = routing_buckets(keys)
    assert ((buckets >= 0) & (buckets < 1)).all()
    assert len(set(buckets[:5000].tolist())) == 5000  # no two customers share a position
    # a key too long for one sum in 64 bits (routed key by key), beside short ones
    long = ["z" * (1 << 20), "short", "\U0010ffff" * 3, "\U0010ffff" * 2047, "y" * 2048]
    assert routing_buckets(long).tolist() == [routing_bucket(k) for k in long]


def test_routing_keys_customer_id_then_header_then_the_features() -> None:
    names = ["tenure", "contract_type"]
    rows = [
        {"tenure": 1, "contract_type": "One year", "customer_id": 42},
        {"tenure": 1, "contract_type": "One year", "customer_id": "42"},
        {"tenure": 1, "contract_type": "One year"},
        {"contract_type": "One year", "tenure": 1},  # another key order, same customer data
        {"tenure": 2, "contract_type": "One year"},
    ]
    with_header = routing_keys(rows, "abc", names)
    assert with_header[:3] == ["42", "42", "abc"]
    plain = routing_keys(rows, None, names)
    assert plain[0] == plain[1] == "42"
    assert plain[2] == plain[3] != plain[4]


def test_schema_difference_ignores_what_training_observed(trained_model: TrainedModel) -> None:
    from churn.bundle import load_bundle

    schema = load_bundle(trained_model.model_path).schema
    observed = schema.model_copy(
        update={
            "features": [
                f.model_copy(update={"observed_max": (f.observed_max or 0) + 1})
                for f in schema.features
            ]
        }
    )
    assert schema_difference(schema, observed) is None
    fewer = schema.model_copy(update={"features": schema.features[1:]})
    assert "features" in (schema_difference(schema, fewer) or "")
    ruled = schema.model_copy(
        update={
            "features": [
                f.model_copy(update={"max": 5.0}) if f.name == "num_products" else f
                for f in schema.features
            ]
        }
    )
    assert "num_products" in (schema_difference(schema, ruled) or "")


# ---------------------------------------------------------------------------- the log


def _served(batch_id: str, rows: int = 3) -> PredictionBatch:
    return PredictionBatch(
        batch_id=batch_id,
        created_at=time.time(),
        model_version="1",
        columns={"tenure": list(range(rows))},
        probabilities=[0.5] * rows,
        tiers=["MEDIUM"] * rows,
    )


def _shadow(batch_id: str, rows: int = 3) -> ShadowBatch:
    return ShadowBatch(
        batch_id=batch_id,
        created_at=time.time(),
        model_version="2",
        served_version="1",
        probabilities=[0.25] * rows,
        tiers=["LOW"] * rows,
    )


def test_shadow_scores_are_written_with_their_served_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    drops: list[tuple[str, int]] = []
    writer = PredictionLogWriter(
        engine,
        queue_size=10,
        shadow_queue_size=4,
        flush_interval=0.02,
        on_shadow_drop=lambda reason, n: drops.append((reason, n)),
        spool=Spool(tmp_path / "spool"),
    )
    writer.prepare()
    writer.start()
    batch_id = "0" * 12 + "a" * 16
    assert writer.enqueue(_served(batch_id))
    assert writer.enqueue(_shadow(batch_id))
    assert writer.is_pending(batch_id + "0000")  # a shadow score never stands for a served one
    # the shadow bound is its own: a full shadow queue never takes a served prediction's place
    assert not writer.enqueue(_shadow("1" * 28, rows=5))
    assert writer.enqueue(_served("2" * 28, rows=5))
    assert wait_until(lambda: writer.written == 8 and writer.shadow_written == 3)
    writer.close()
    assert drops == [("queue_full", 5)]
    assert writer.dropped == {}
    with engine.connect() as conn:
        shadow = conn.execute(sa.text("SELECT * FROM shadow_predictions")).mappings().all()
    assert len(shadow) == 1
    assert shadow[0]["batch_id"] == batch_id
    assert (shadow[0]["model_version"], shadow[0]["served_version"]) == ("2", "1")


def test_a_dead_workers_shadow_scores_are_adopted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    batch_id = "0" * 12 + "b" * 16
    spool.append(_served(batch_id).spool_record())
    spool.append(_shadow(batch_id).spool_record())
    record = decode_record(_shadow(batch_id).spool_record())
    assert record["served_version"] == "1"
    with pytest.raises(ValueError, match="not a spool record"):
        decode_record(b'{"batch_id":"x","created_at":1,"model_version":"2","served_version":3}')
    # the owner "dies": its lock goes with its descriptor
    import os

    os.close(spool._done_fd)
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    from churn.prediction_log import create_tables

    create_tables(engine)
    (orphan,) = list(orphans(tmp_path))
    assert (orphan.predictions, orphan.shadow_scores) == (3, 3)
    insert_missing(engine, orphan.records)
    insert_missing(engine, orphan.records)  # a second adoption adds nothing
    orphan.release()
    with engine.connect() as conn:
        counts = [
            conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar()
            for t in ("prediction_batches", "shadow_predictions")
        ]
    assert counts == [1, 1]


# ---------------------------------------------------------------------------- the service


class FailingPredictor:
    """The challenger's backend failing at the edge (what a broken runtime would do)."""

    backend = "failing"

    def __init__(self, real: Any) -> None:
        self.real = real

    def prepare(self, columns: Any) -> Any:
        return self.real.prepare(columns)

    def predict_prepared(self, prepared: Any) -> Any:
        raise RuntimeError("the challenger's runtime failed")


@pytest.fixture
def served(trained_model: TrainedModel, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(trained_model.model_path, tmp_path, shadow_queue_size=8)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").status_code == 200
        yield client


def _challenger(
    client: TestClient, stage: str, broken: bool, share: float = 1.0, **bounds: Any
) -> Challenger:
    service = client.app.state.service  # type: ignore[attr-defined]
    champion = service.model
    model = replace(
        champion,
        version="99",
        predictor=FailingPredictor(champion.predictor) if broken else champion.predictor,
    )
    record = RolloutRecord.start("99", champion.version, "test", by="test", guardrails=bounds)
    if stage == CANARY:
        record = record.moved(CANARY, "test", by="test", share=share)
    challenger = Challenger(model, record, Guardrails.from_record(bounds))
    service.rollout._set(challenger)
    return challenger


def test_a_failing_canary_falls_back_to_the_champion_then_rolls_back(
    served: TestClient,
) -> None:
    _challenger(served, CANARY, broken=True, min_requests=5, max_error_ratio=0.02)
    for i in range(8):
        answer = served.post("/predict", json={**CUSTOMER, "customer_id": i})
        assert answer.status_code == 200  # the champion answered instead
        assert answer.headers["x-model-role"] == "champion"
        assert answer.json()["model_version"] != "99"
    text = served.get("/metrics").text
    errors = metric_value(text, "predictions_total", outcome="error", role="challenger")
    assert errors == 5  # judged (and rolled back) at the fifth
    assert metric_value(text, "rollout_rollbacks_total", reason="error_ratio") == 1
    assert metric_value(text, "rollout_canary_share") == 0
    assert metric_value(text, "rollout_stage", stage="rolled_back") == 1
    assert metric_value(text, "predictions_total", outcome="error", role="champion") == 0
    assert served.get("/model").json()["rollout"]["rolled_back"] == "error_ratio"


def test_the_guardrail_window_counts_both_models_canary_answers(served: TestClient) -> None:
    _challenger(served, CANARY, broken=False, share=0.5)
    rollout = served.app.state.service.rollout  # type: ignore[attr-defined]
    customers = [{**CUSTOMER, "customer_id": f"c-{i}"} for i in range(40)]
    answer = served.post("/predict/batch", json={"customers": customers})
    assert answer.status_code == 200
    versions = [p["model_version"] for p in answer.json()["predictions"]]
    mine = versions.count("99")
    assert 0 < mine < 40
    # the champion's answers reach the window at the end of their loop iteration
    stats = rollout.window.stats(time.monotonic())
    assert (stats.challenger_rows, stats.champion_rows) == (mine, 40 - mine)
    # the metrics hand them over as they apply them: off an event loop, at once
    metrics = served.app.state.service.metrics  # type: ignore[attr-defined]
    metrics.observe_predictions([0.9, 0.8, 0.1], [True, True, False], 1, 0.01, "champion")
    metrics.observe_predictions([0.9], [True], 1, 0.01, "challenger")  # judged as they come
    later = rollout.window.stats(time.monotonic())
    assert (later.champion_rows, later.champion_high) == (43 - mine, stats.champion_high + 1)
    assert later.challenger_rows == mine


def test_a_healthy_canary_answers_with_its_version(served: TestClient) -> None:
    _challenger(served, CANARY, broken=False)
    answer = served.post("/predict/batch", json={"customers": [CUSTOMER] * 3})
    assert answer.status_code == 200
    assert answer.headers["x-model-role"] == "challenger"
    assert answer.headers["x-model-version"] == "99"
    body = answer.json()
    assert body["model_version"] == "99"
    assert {p["model_version"] for p in body["predictions"]} == {"99"}
    text = served.get("/metrics").text
    assert metric_value(text, "predictions_total", outcome="success", role="challenger") == 3
    # the champion scored the challenger's rows in shadow (paired)
    assert wait_until(
        lambda: (
            metric_value(served.get("/metrics").text, "shadow_predictions_total", outcome="success")
            == 3
        )
    )


def _split_batch(client: TestClient) -> tuple[list[bool], list[dict[str, Any]]]:
    """A 200-customer batch through a canary at 50 %: which rows the routing rule gives the
    challenger, and the answers."""
    from churn.rollout import routing_bucket

    customers = [{**CUSTOMER, "tenure": i % 60, "customer_id": f"c-{i}"} for i in range(200)]
    picked = [routing_bucket(f"c-{i}") < 0.5 for i in range(200)]
    answer = client.post("/predict/batch", json={"customers": customers})
    assert answer.status_code == 200
    assert answer.headers["x-model-role"] == "mixed"
    return picked, answer.json()["predictions"]


def test_a_split_canary_batch_answers_in_request_order_with_pairs(served: TestClient) -> None:
    alone = served.post(  # the champion alone, before the canary
        "/predict/batch",
        json={"customers": [{**CUSTOMER, "tenure": i % 60} for i in range(200)]},
    ).json()["predictions"]
    _challenger(served, CANARY, broken=False, share=0.5)
    picked, predictions = _split_batch(served)
    assert 60 < sum(picked) < 140
    assert [p["model_version"] == "99" for p in predictions] == picked
    # the same model under both names here: request order kept, row by row
    got = [p["churn_probability"] for p in predictions]
    assert got == [p["churn_probability"] for p in alone]
    assert len({p["prediction_id"] for p in predictions}) == 200
    # the champion scored each of the challenger's rows, paired with it
    assert wait_until(
        lambda: (
            metric_value(served.get("/metrics").text, "shadow_predictions_total", outcome="success")
            == sum(picked)
        )
    )


def test_a_split_canary_batch_keeps_each_rows_explanation_and_warnings(
    served: TestClient,
) -> None:
    """Explained, with reinterpreted rows among both models' rows: each answer carries its
    own explanation and warnings, in request order, as the champion alone gives them (the
    same model under both names here); the headers name both versions, champion first."""
    customers = [
        {
            **CUSTOMER,
            "tenure": i % 60,
            "internet_service": "Satellite" if i % 7 == 0 else CUSTOMER["internet_service"],
            "customer_id": f"c-{i}",
        }
        for i in range(60)
    ]
    alone = served.post("/predict/batch?explain=true", json={"customers": customers})
    assert alone.status_code == 200, alone.text
    champion = served.app.state.service.model.version  # type: ignore[attr-defined]
    _challenger(served, CANARY, broken=False, share=0.5)
    answer = served.post("/predict/batch?explain=true", json={"customers": customers})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-role"] == "mixed"
    assert answer.headers["x-model-version"] == f"{champion},99"
    body = answer.json()
    assert body["model_version"] == champion and body["count"] == 60
    predictions = body["predictions"]
    versions = [p["model_version"] for p in predictions]
    assert 10 < versions.count("99") < 50 and versions.count(champion) == 60 - versions.count("99")
    for got, expected in zip(predictions, alone.json()["predictions"], strict=True):
        assert got["churn_probability"] == expected["churn_probability"]
        assert got["explanation"] == expected["explanation"]
        assert got.get("warnings") == expected.get("warnings")
    assert sum("warnings" in p for p in predictions) == len(range(0, 60, 7))


def test_a_split_canary_batch_through_the_open_inference_protocol(served: TestClient) -> None:
    """/v2 infer, whose rows name no customer (each routed by its features): the outputs in
    request order, each row's own id."""
    from churn.datagen import generate_customers

    service = served.app.state.service  # type: ignore[attr-defined]
    model = service.model
    names = list(model.schema.names)
    frame = generate_customers(80, seed=11)[names].dropna()
    frame["num_products"] = frame["num_products"].astype(int)
    customers = frame.to_dict("records")
    types = {
        s.name: ("BYTES" if s.kind == "categorical" else "INT64" if s.integer else "FP64")
        for s in model.schema.features
    }
    request = {
        "inputs": [
            {
                "name": n,
                "shape": [len(customers)],
                "datatype": dt,
                "data": [c[n] for c in customers],
            }
            for n, dt in types.items()
        ]
    }
    path = f"/v2/models/{model.metadata['model_name']}/infer"
    alone = served.post(path, json=request)
    assert alone.status_code == 200, alone.text
    _challenger(served, CANARY, broken=False, share=0.5)
    answer = served.post(path, json=request)
    assert answer.status_code == 200, answer.text
    got = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    expected = {o["name"]: o["data"] for o in alone.json()["outputs"]}
    for name in ("churn_probability", "churn_prediction", "risk_tier"):
        assert got[name] == expected[name]
    assert len(set(got["prediction_id"])) == len(customers)
    answered = metric_value(
        served.get("/metrics").text, "predictions_total", outcome="success", role="challenger"
    )
    assert 0 < answered < len(customers)


def test_an_unpaired_canary_routes_without_pairs(served: TestClient) -> None:
    challenger = _challenger(served, CANARY, broken=False, share=0.5)
    record = challenger.record.moved(CANARY, "routing alone", by="test", share=0.5, paired=False)
    service = served.app.state.service  # type: ignore[attr-defined]
    service.rollout._set(replace(challenger, record=record))
    picked, predictions = _split_batch(served)
    assert [p["model_version"] == "99" for p in predictions] == picked
    text = served.get("/metrics").text
    answered = metric_value(text, "predictions_total", outcome="success", role="challenger")
    assert answered == sum(picked)
    assert metric_value(text, "shadow_predictions_total", outcome="success") == 0


def test_shadow_never_fails_an_answer_and_counts_what_it_could_not_score(
    served: TestClient,
) -> None:
    _challenger(served, "shadow", broken=True)
    answer = served.post("/predict/batch", json={"customers": [CUSTOMER] * 5})
    assert answer.status_code == 200
    assert answer.headers["x-model-role"] == "champion"
    # more rows than SHADOW_QUEUE_SIZE (8) waiting: dropped, never waited for
    served.post("/predict/batch", json={"customers": [CUSTOMER] * 9})

    def shadow(outcome: str) -> float:
        return metric_value(
            served.get("/metrics").text, "shadow_predictions_total", outcome=outcome
        )

    assert wait_until(lambda: shadow("error") == 5)
    assert shadow("dropped") == 9
    assert shadow("success") == 0
