"""Percentiles, summaries and ratios of the benchmark's figures."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from opsagent.errors import InputError


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default); InputError for no values or `q` outside 0..100."""
    if not 0 <= q <= 100:
        raise InputError(f"percentile must be within 0..100, got {q}")
    data = sorted(values)
    if not data:
        raise InputError("percentile of no values")
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


class Summary(BaseModel):
    """Latency percentiles of a set of cases, in seconds."""

    n: int
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(n=0)
        return cls(n=len(values), p50=percentile(values, 50), p95=percentile(values, 95),
                   p99=percentile(values, 99), mean=sum(values) / len(values))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def throughput(cases: int, wall_s: float) -> float | None:
    """Cases per second over a wall-clock window (None for an empty window)."""
    return ratio(float(cases), wall_s)


class Target(BaseModel):
    """One of the issue's targets and whether it was met."""

    name: str
    measured: float | None = Field(description="The measured value (None: not measured).")
    limit: float
    at_most: bool = Field(description="True: met when measured <= limit; False: when >= limit.")

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit
