"""Missing values: two-proportion z-test of the missing rate."""

from __future__ import annotations

import math

from scipy import stats


def missing_rate_p_value(
    n_ref: int, missing_ref: int, n_cur: int, missing_cur: int
) -> float | None:
    """Two-sided two-proportion z-test of the missing rate; None when nothing is ever missing.

    With no missing value on either side the test cannot reject whatever happens, so it is
    left out of the multiple-testing family instead of diluting it.
    """
    total_missing = missing_ref + missing_cur
    if total_missing == 0 or n_ref == 0 or n_cur == 0:
        return None
    pooled = total_missing / (n_ref + n_cur)
    if pooled >= 1.0:
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_cur))
    z = (missing_cur / n_cur - missing_ref / n_ref) / se
    return float(2 * stats.norm.sf(abs(z)))
