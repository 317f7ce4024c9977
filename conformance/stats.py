"""Small descriptive statistics for check observations (percentiles without numpy)."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def describe(values: Sequence[float], ndigits: int = 1) -> dict[str, float | int | None]:
    """p50/p90/p99/min/max/mean and sample count; None figures when there is no sample."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "min": None, "max": None,
                "mean": None, "samples": 0}
    s = sorted(values)
    return {
        "p50": round(percentile(s, 50), ndigits),
        "p90": round(percentile(s, 90), ndigits),
        "p99": round(percentile(s, 99), ndigits),
        "min": round(s[0], ndigits),
        "max": round(s[-1], ndigits),
        "mean": round(sum(s) / len(s), ndigits),
        "samples": len(s),
    }


def share_exceeded(exceeding: int, samples: int, share: float, confidence: float = 0.95) -> bool:
    """Whether ``exceeding`` of ``samples`` shows, with the given one-sided confidence, that
    more than ``share`` of all requests exceed a bound (exact binomial test).

    A percentile budget on a few hundred requests is otherwise decided by its one or two
    largest values: a p99 of 85 samples is the second-largest. Here two scheduling outliers
    in 85 do not fail a 1% budget (P(X >= 2) = 0.21 if the true share is 1%), while a fault
    on 5% of the requests does.
    """
    if samples <= 0 or exceeding <= 0:
        return False
    # P(X >= exceeding) for X ~ Binomial(samples, share)
    below = sum(math.comb(samples, i) * share ** i * (1 - share) ** (samples - i)
                for i in range(exceeding))
    return 1.0 - below < 1.0 - confidence
