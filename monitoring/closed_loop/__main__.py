"""``python -m monitoring.closed_loop``: one closed-loop cycle (see monitoring.closed_loop.cli)."""

import sys

from monitoring.closed_loop.cli import main

sys.exit(main())
