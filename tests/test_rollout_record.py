"""The rollout record: stages, transitions, JSON round trip and the canary routing bucket."""

from __future__ import annotations

import json

import pytest

from churn.rollout import (
    CANARY,
    PROMOTED,
    REJECTED,
    ROLLED_BACK,
    SHADOW,
    RolloutError,
    RolloutRecord,
    routing_bucket,
)


def _record() -> RolloutRecord:
    return RolloutRecord.start(
        "7", "6", "retrained on window 2026-11-01", by="test", guardrails={"max_error_ratio": 0.02}
    )


def test_start_is_shadow_with_no_share_and_one_history_step() -> None:
    record = _record()
    assert record.stage == SHADOW and record.shadowing and record.active
    assert record.serving_share == 0.0
    assert [step.stage for step in record.history] == [SHADOW]


def test_transitions_are_kept_in_order_and_round_trip_through_json() -> None:
    record = _record().moved(CANARY, "shadow agreed", by="op", share=0.05)
    record = record.moved(CANARY, "widen", by="op", share=0.10)
    record = record.moved(ROLLED_BACK, "error ratio 0.2 > 0.02", by="worker 12")
    assert record.serving_share == 0.0 and not record.active
    assert [step.stage for step in record.history] == [SHADOW, CANARY, CANARY, ROLLED_BACK]
    assert RolloutRecord.from_json(record.to_json()) == record


def test_a_canary_is_paired_unless_told_and_keeps_the_choice() -> None:
    record = _record().moved(CANARY, "shadow agreed", by="op", share=0.05)
    assert record.paired
    unpaired = record.moved(CANARY, "routing alone", by="op", share=0.10, paired=False)
    assert not unpaired.paired
    assert not unpaired.moved(CANARY, "widen", by="op", share=0.2).paired  # kept
    assert RolloutRecord.from_json(unpaired.to_json()) == unpaired
    # a record written before the choice existed reads as paired
    old = json.loads(record.to_json())
    del old["paired"]
    assert RolloutRecord.from_json(json.dumps(old)).paired
    with pytest.raises(RolloutError, match="paired"):
        RolloutRecord.from_json(record.to_json().replace('"paired": true', '"paired": "no"'))


@pytest.mark.parametrize("final", [PROMOTED, REJECTED, ROLLED_BACK])
def test_an_ended_rollout_cannot_move_again(final: str) -> None:
    ended = _record().moved(final, "done", by="op")
    with pytest.raises(RolloutError, match="has ended"):
        ended.moved(CANARY, "again", by="op", share=0.1)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_a_canary_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(RolloutError):
        _record().moved(CANARY, "bad share", by="op", share=share)


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": "1"}', _record().to_json().replace('"shadow"', '"live"', 1)],
)
def test_an_unreadable_record_says_so(text: str) -> None:
    with pytest.raises(RolloutError):
        RolloutRecord.from_json(text)


def test_routing_bucket_is_stable_uniform_and_monotone_in_share() -> None:
    keys = [f"customer-{i}" for i in range(20_000)]
    buckets = [routing_bucket(key) for key in keys]
    assert buckets == [routing_bucket(key) for key in keys]  # same key, same bucket
    assert all(0.0 <= b < 1.0 for b in buckets)
    at_10 = {k for k, b in zip(keys, buckets, strict=True) if b < 0.10}
    at_5 = {k for k, b in zip(keys, buckets, strict=True) if b < 0.05}
    assert abs(len(at_10) / len(keys) - 0.10) < 0.01
    assert at_5 <= at_10  # widening the canary only adds customers
