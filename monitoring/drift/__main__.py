"""``python -m monitoring.drift``: the drift CLI (see monitoring.drift.cli)."""

import sys

from monitoring.drift.cli import main

sys.exit(main())
