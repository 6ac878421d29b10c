"""The prediction log's spool: what a worker killed outright had answered reaches the log.

The dead workers here are real processes killed with SIGKILL, so the kernel (not the test)
drops their locks, as it does for a uvicorn worker.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.ids import RandomHex
from churn.prediction_log import (
    PredictionBatch,
    PredictionLogWriter,
    Spool,
    SpoolPosition,
    make_engine,
    orphans,
    read_predictions,
    write_batches,
)
from churn.prediction_log.spool import decode_record
from tests.api_support import wait_until
from tests.processes import ROOT

_ids = RandomHex()


def batch(rows: int = 2, version: str = "7") -> PredictionBatch:
    return PredictionBatch(
        batch_id=_ids.batch_id(),
        created_at=time.time(),
        model_version=version,
        columns={"tenure": [float(i) for i in range(rows)], "contract_type": ["One year"] * rows},
        probabilities=[0.25] * rows,
        tiers=["LOW"] * rows,
    )


def dead_worker(directory: Path, batches: int, settled: int, torn: bool = False) -> list[str]:
    """A real process that spools `batches` batches, marks the first `settled` of them
    settled (optionally starts a record it never finishes), and is then killed -9; the batch
    ids it spooled."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from app.ids import RandomHex
        from churn.prediction_log import PredictionBatch, Spool
        spool = Spool(Path({str(directory)!r}))
        ids = RandomHex()
        marks = []
        for i in range({batches}):
            b = PredictionBatch(ids.batch_id(), time.time(), "7", {{"tenure": [1.0, float(i)]}},
                                [0.5, 0.75], ["MEDIUM", "HIGH"])
            marks.append(spool.append(b.spool_record()))
            print(b.batch_id, flush=True)
        if {settled}:
            spool.settled(marks[{settled} - 1])
        if {torn}:
            spool._map[spool._size:spool._size + 12] = b'{{"batch_id":'  # cut short
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    spooled = []
    for line in process.stdout:
        if line.strip() == "ready":
            break
        spooled.append(line.strip())
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert len(spooled) == batches
    return spooled


def logged_ids(url: str) -> set[str]:
    frame = read_predictions(url)
    return {pid[:28] for pid in frame["prediction_id"]} if len(frame) else set()


def spooled_lines(path: Path) -> list[bytes]:
    """The records in a segment file: lines up to the zeros after the last one."""
    return path.read_bytes().split(b"\0", 1)[0].splitlines()


def test_append_then_settle(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = batch(), batch(3)
    a = spool.append(first.spool_record())
    b = spool.append(second.spool_record())
    assert a < b and a.segment == b.segment == 0
    segment = tmp_path / f"{spool.name}.0.spool"
    lines = spooled_lines(segment)
    assert [decode_record(line)["batch_id"] for line in lines] == [
        first.batch_id,
        second.batch_id,
    ]
    assert decode_record(lines[1])["probabilities"] == [0.25] * 3
    assert b.offset == sum(len(line) + 1 for line in lines)
    spool.settled(a)
    done = (tmp_path / f"{spool.name}.done").read_text().split()
    assert [int(v) for v in done] == [0, a.offset]
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_settled_segments_are_deleted(tmp_path: Path) -> None:
    """Under load the writer never catches up completely: the spool moves to a new segment
    and the settled ones go, instead of one file growing forever."""
    spool = Spool(tmp_path, segment_bytes=300)
    marks = [spool.append(batch(5).spool_record()) for _ in range(6)]
    assert marks[-1].segment >= 2
    spool.settled(marks[-2])
    left = sorted(p.name for p in tmp_path.glob("*.spool"))
    assert left == [f"{spool.name}.{marks[-2].segment}.spool"] + (
        [f"{spool.name}.{marks[-1].segment}.spool"]
        if marks[-1].segment != marks[-2].segment
        else []
    )
    spool.close()


def test_a_live_spool_is_not_adopted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(batch().spool_record())
    assert list(orphans(tmp_path)) == []  # its owner holds the lock
    spool.close()


def test_a_dead_workers_unsettled_records_are_adopted_once(tmp_path: Path) -> None:
    """kill -9 of a worker with 5 batches spooled, 2 settled, 1 record cut short, 1 batch
    already written (it died between the commit and the mark): the adopter writes the other
    2, ignores the duplicate and the torn record, and deletes the spool."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spooled = dead_worker(spool_dir, batches=5, settled=2, torn=True)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    already = batch()
    already.batch_id = spooled[2]  # written by the dead worker before it could mark it
    writer = PredictionLogWriter(engine, spool=Spool(spool_dir))
    assert writer.prepare()
    write_batches(engine, [already])
    assert writer.adopt() == 3 * 2  # three unsettled batches of two predictions
    assert logged_ids(url) == set(spooled[2:])
    frame = read_predictions(url)
    assert len(frame) == 6  # the duplicate was not inserted twice
    adopted = frame[frame["prediction_id"].str.startswith(spooled[3])]
    assert adopted["probability"].tolist() == [0.5, 0.75]
    assert adopted["risk_tier"].tolist() == ["MEDIUM", "HIGH"]
    assert adopted["tenure"].tolist() == [1.0, 3.0]
    assert writer.recovered == 6
    # Only the adopter's own spool is left; a second look finds nothing.
    assert sorted(p.name for p in spool_dir.iterdir()) == [
        f"{writer.spool.name}.0.spool",  # type: ignore[union-attr]
        f"{writer.spool.name}.done",  # type: ignore[union-attr]
    ]
    assert writer.adopt() == 0
    writer.close()
    assert list(spool_dir.iterdir()) == []


def test_adoption_waits_for_the_store(tmp_path: Path) -> None:
    """The store unavailable: the dead worker's spool stays for the next try; nothing is
    counted or deleted until its records are in."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spooled = dead_worker(spool_dir, batches=3, settled=0)
    drops: list[tuple[str, int]] = []
    broken = PredictionLogWriter(
        make_engine(f"sqlite:///{tmp_path / 'missing' / 'log.db'}", timeout=0.2),
        spool=Spool(spool_dir),
        on_drop=lambda reason, n: drops.append((reason, n)),
    )
    assert broken.adopt() == 0
    assert len(list(spool_dir.glob("*.done"))) == 2  # the dead one's and the adopter's
    broken.close()
    assert drops == []
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(make_engine(url), spool=Spool(spool_dir))
    assert writer.adopt() == 6
    assert logged_ids(url) == set(spooled)
    writer.close()


def test_the_writer_spools_until_written_and_adopts_at_start(tmp_path: Path) -> None:
    """The writer hands each batch to the spool before enqueue returns, empties it once the
    batch is in the store, and its thread adopts dead workers' spools when it starts."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spooled = dead_worker(spool_dir, batches=2, settled=0)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(
        make_engine(url), flush_interval=0.02, spool=Spool(spool_dir), adopt_interval=0.05
    )
    assert writer.prepare()
    mine = batch(4)
    assert writer.enqueue(mine)  # not started yet: in the queue and in the spool
    own = spool_dir / f"{writer.spool.name}.0.spool"  # type: ignore[union-attr]
    [line] = spooled_lines(own)
    assert decode_record(line)["batch_id"] == mine.batch_id
    done = spool_dir / f"{writer.spool.name}.done"  # type: ignore[union-attr]
    writer.start()
    assert wait_until(lambda: logged_ids(url) == {mine.batch_id, *spooled}, timeout=10)
    # settled up to the end of its record
    assert wait_until(lambda: int(done.read_text().split()[1]) == len(line) + 1, timeout=5)
    assert writer.written == 4 and writer.recovered == 4
    writer.close()
    assert list(spool_dir.iterdir()) == []


def test_a_full_spool_disk_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool that cannot grow costs crash safety, not predictions: the batch is still
    queued and written, and the failure is logged. (The disk is the edge mocked here:
    allocating the next segment fails with ENOSPC.)"""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    spool = Spool(tmp_path / "spool", segment_bytes=64)  # every record needs a new segment

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    writer = PredictionLogWriter(make_engine(url), flush_interval=0.02, spool=spool)
    assert writer.prepare()
    writer.start()
    one = batch()
    assert writer.enqueue(one)
    assert wait_until(lambda: logged_ids(url) == {one.batch_id}, timeout=10)
    assert "spool write failed" in caplog.text
    assert sorted(p.name for p in (tmp_path / "spool").glob("*.spool")) == [f"{spool.name}.0.spool"]
    writer.close()


def test_spool_positions_order_as_written() -> None:
    assert SpoolPosition(0, 900) < SpoolPosition(1, 10) < SpoolPosition(1, 11)


@pytest.mark.parametrize(
    "line",
    [
        b'{"batch_id":"ab","created_at":1.0,"model_version":"7","features":{},"probabilities":[0.5]',
        b'{"batch_id":"ab","created_at":"x","model_version":"7","features":{},'
        b'"probabilities":[0.5],"risk_tiers":["LOW"]}',
        b'{"batch_id":"ab","created_at":1.0,"model_version":"7","features":{},'
        b'"probabilities":[0.5],"risk_tiers":[]}',
        b"[1, 2]",
    ],
)
def test_malformed_records_are_refused(line: bytes) -> None:
    """A torn copy, or JSON that is not a whole record, never reaches the store."""
    with pytest.raises(ValueError, match="not a spool record"):
        decode_record(line)


def test_a_record_round_trips() -> None:
    one = batch(3)
    record = decode_record(one.spool_record().rstrip(b"\n"))
    assert record["batch_id"] == one.batch_id
    assert record["features"] == {"tenure": [0.0, 1.0, 2.0], "contract_type": ["One year"] * 3}
    assert record["created_at"] == one.created_at


def test_the_spool_dir_defaults_to_the_metrics_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker of one server shares PROMETHEUS_MULTIPROC_DIR, so a live one finds a dead
    one's spool there; one process alone has no spool unless configured."""
    from app.main import spool_root

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert spool_root(None) is None
    assert spool_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert spool_root(None) == tmp_path / "prediction-spool"
