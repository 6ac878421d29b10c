"""Requests handed straight to an ASGI app, as a server would (no HTTP client, no socket)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def post_scope(
    path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """A JSON POST of `body` to `path` as an ASGI server hands it to the app (with an empty
    lifespan ``state``, as uvicorn gives), plus `headers`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": {},
    }
