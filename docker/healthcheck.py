"""Container HEALTHCHECK: exit 0 when the API's liveness endpoint answers 200.

Uses only the standard library because the slim runtime image has no curl or wget.
HEALTHCHECK_PATH lets the same script probe /ready (or MLflow's /health) when wanted.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe http://127.0.0.1:$PORT$HEALTHCHECK_PATH; print why on failure."""
    port = os.environ.get("PORT", "8000")
    path = os.environ.get("HEALTHCHECK_PATH", "/health")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
