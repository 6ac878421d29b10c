"""Progressive delivery of a registered model: shadow, canary, evaluate, promote, abort.

    python rollout.py [--config PATH] start|canary|evaluate|promote|abort|status ...

`python rollout.py --help` lists the commands and exit codes; the work lives in
churn/challenger.py (registry actions) and monitoring/rollout/ (evidence and decision).
"""

from __future__ import annotations

import sys

from monitoring.rollout.cli import main

if __name__ == "__main__":
    sys.exit(main())
