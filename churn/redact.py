"""Redact credentials from text before it reaches a log line or an answer.

Registry and store URLs may carry user info (``http://user:secret@host``) or tokens in the
query string, and client libraries quote those URLs in their exception messages. Every place
that logs such text goes through `redact`, so one rule decides what a credential looks like.
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme://user:password@host or scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"]+@")
# ?password=...&token=... (and the like) in query strings or key=value text
_SECRET_PARAMS = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|access_token|api_key|apikey)=)[^&\s'\"]+",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """`text` (any object, as ``str()``) with URL user info and secret parameters masked."""
    masked = _USERINFO.sub(rf"\g<scheme>{REDACTED}@", str(text))
    return _SECRET_PARAMS.sub(rf"\g<key>{REDACTED}", masked)
