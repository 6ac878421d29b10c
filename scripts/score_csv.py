"""Replay a CSV to the running churn API in batches and write the answers to a CSV.

    .venv/bin/python scripts/score_csv.py data/x.csv [--url http://localhost:8000]
        [--out reports/x_scored.csv] [--batch-size 500] [--feedback churned]

(`make score FILE=data/x.csv [URL=...] [OUT=...]` runs it.) The feature columns are the
served model's (read from GET /model), so a retrain with other features needs no change
here; other columns (ids, the label) are copied to the output untouched. Blank cells are
sent as null. With --feedback COLUMN, the CSV's true outcomes are then sent to
POST /feedback/batch, joined to the predictions by id (blank labels are skipped).

Exit codes: 0 all rows scored; 1 the API refused a batch or is unreachable (the message
names the rows and the API's reason; no output file is written); 2 bad arguments or a CSV
that lacks a feature column or holds a non-number in a numeric one.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

MISSING = {"", "na", "nan", "null", "none"}
ANSWER_COLUMNS = [
    "churn_probability",
    "churn_prediction",
    "risk_tier",
    "model_version",
    "prediction_id",
]
TRUE = {"1", "true", "yes", "1.0"}
FALSE = {"0", "false", "no", "0.0"}


class ScoreError(RuntimeError):
    """The API refused a request or could not be reached (exit 1)."""


class InputError(ValueError):
    """The CSV or the arguments cannot be used (exit 2)."""


def redact(url: str) -> str:
    """The URL without user:password, so credentials never reach a terminal or a log."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def call(url: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
    """GET (body None) or POST JSON; the parsed answer, or ScoreError with the API's reason."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InputError(f"--url must be http:// or https://, got {redact(url)!r}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url.rstrip("/") + path,
        data=data,
        headers={"Content-Type": "application/json"} if data is not None else {},
        method="GET" if data is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:2000]
        raise ScoreError(f"{path}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScoreError(f"cannot reach the API at {redact(url)} ({reason})") from None


def served_features(url: str) -> list[tuple[str, str]]:
    """(name, kind) of each feature the served model takes, from GET /model."""
    metadata = call(url, "/model")
    try:
        return [(f["name"], f["kind"]) for f in metadata["feature_schema"]["features"]]
    except (KeyError, TypeError):
        raise ScoreError("GET /model did not return a feature schema") from None


def parse_value(raw: str | None, kind: str, where: str) -> Any:
    """A CSV cell as JSON: null for a blank, a number for a numeric feature, else the text."""
    if raw is None or raw.strip().lower() in MISSING:
        return None
    if kind == "categorical":
        return raw
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: {raw!r} is not a number") from None


def check_columns(header: Sequence[str], features: list[tuple[str, str]], source: str) -> None:
    missing = [name for name, _ in features if name not in header]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, header, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise InputError(f"{source}: no column for feature {', '.join(hints)}")


def batches(rows: list[dict[str, str]], size: int) -> Iterator[tuple[int, list[dict[str, str]]]]:
    for start in range(0, len(rows), size):
        yield start, rows[start : start + size]


def to_customers(
    chunk: list[dict[str, str]], start: int, features: list[tuple[str, str]], source: str
) -> list[dict[str, Any]]:
    # Row numbers as a spreadsheet shows them: the header is row 1.
    return [
        {
            name: parse_value(row.get(name), kind, f"{source} row {start + i + 2}, column {name}")
            for name, kind in features
        }
        for i, row in enumerate(chunk)
    ]


def parse_outcome(raw: str | None) -> bool | None:
    value = (raw or "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    return None


def score_file(
    path: Path, url: str, out: Path, batch_size: int, feedback_column: str | None = None
) -> dict[str, int]:
    """Score every row of `path`; write the CSV to `out` only once every batch is answered."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    if not header:
        raise InputError(f"{path}: empty file (no header row)")
    if feedback_column is not None and feedback_column not in header:
        raise InputError(f"{path}: no column '{feedback_column}' for --feedback")
    features = served_features(url)
    check_columns(header, features, str(path))

    answers: list[dict[str, Any]] = []
    for start, chunk in batches(rows, batch_size):
        customers = to_customers(chunk, start, features, str(path))
        try:
            result = call(url, "/predict/batch", {"customers": customers})
        except ScoreError as exc:
            done = f"{start:,} rows scored before it" if start else "nothing scored"
            raise ScoreError(
                f"rows {start + 2}-{start + len(chunk) + 1} of {path} refused ({done}; "
                f"no output written): {exc}"
            ) from None
        answers.extend(result["predictions"])
        print(f"[score] {start + len(chunk):,}/{len(rows):,} rows", file=sys.stderr, flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    extra = [c for c in ANSWER_COLUMNS if c not in header]
    with tempfile.NamedTemporaryFile(
        "w", newline="", encoding="utf-8", dir=out.parent, delete=False, suffix=".part"
    ) as tmp:
        writer = csv.DictWriter(tmp, fieldnames=[*header, *extra])
        writer.writeheader()
        for row, answer in zip(rows, answers, strict=True):
            writer.writerow({**row, **{c: answer[c] for c in ANSWER_COLUMNS}})
    os.replace(tmp.name, out)

    counts = {"scored": len(answers), "feedback": 0}
    if feedback_column is not None:
        items = [
            {"prediction_id": answer["prediction_id"], "outcome": outcome}
            for row, answer in zip(rows, answers, strict=True)
            if (outcome := parse_outcome(row.get(feedback_column))) is not None
        ]
        for start in range(0, len(items), batch_size):
            try:
                result = call(url, "/feedback/batch", items[start : start + batch_size])
            except ScoreError as exc:
                raise ScoreError(
                    f"scored {len(answers):,} rows -> {out}, but feedback failed after "
                    f"{counts['feedback']:,} outcomes (safe to re-run): {exc}"
                ) from None
            counts["feedback"] += int(result["recorded"])
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="CSV with a header row")
    parser.add_argument("--url", default="http://localhost:8000", help="the running API")
    parser.add_argument("--out", type=Path, help="default: reports/<file name>_scored.csv")
    parser.add_argument("--batch-size", type=int, default=500, help="rows per request")
    parser.add_argument("--feedback", metavar="COLUMN", help="send this column as outcomes")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    out = args.out or Path("reports") / f"{args.file.stem}_scored.csv"
    try:
        counts = score_file(args.file, args.url, out, args.batch_size, args.feedback)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    feedback = f"; {counts['feedback']:,} outcomes sent as feedback" if args.feedback else ""
    print(f"scored {counts['scored']:,} rows from {args.file} -> {out}{feedback}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
