"""How many executors the pool should have, from the tool calls it had in flight: plain code,
no Ray, no clock of its own (every method takes `now`), so it is tested in milliseconds.

The load is a step function: `record(now, in_flight)` at every change. One decision per
`interval_s`:
- grow when the time-weighted average in flight over the last `upscale_delay_s` exceeds
  `target_in_flight` x size, to ceil(average / target);
- shrink when, over the whole last `downscale_delay_s`, the most calls in flight at any moment
  would have fitted in fewer executors (ceil(peak / target)), to that many;
- always within [min_executors, max_executors]; no decision before the window has that much
  history.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime

from pydantic import BaseModel, Field

from opsagent.cluster.config import ExecutorAutoscalingConfig


class ScalingDecision(BaseModel):
    """One decision: the pool's size then, the size wanted, and why."""

    at_s: float = Field(description="The decision's time on the scaler's clock (seconds).")
    size: int = Field(description="Executors in the pool when deciding.")
    desired: int = Field(description="Executors wanted (equal to size: keep it).")
    average_in_flight: float | None = Field(
        description="Average calls in flight over upscale_delay_s; None: not enough history yet.")
    reason: str


class InFlightHistory:
    """Calls in flight over time, as (time, value) points; each value holds until the next."""

    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque()

    def record(self, now: float, in_flight: int) -> None:
        if in_flight < 0:
            raise ValueError(f"in-flight calls cannot be negative, got {in_flight}")
        if self._points and now < self._points[-1][0]:
            raise ValueError(f"time went backwards: {now} after {self._points[-1][0]}")
        if self._points and self._points[-1][0] == now:
            self._points.pop()
        self._points.append((now, in_flight))

    def forget_before(self, start: float) -> None:
        """Drop the points older than `start`, keeping the one in force at `start`."""
        while len(self._points) > 1 and self._points[1][0] <= start:
            self._points.popleft()

    def _segments(self, start: float, end: float) -> list[tuple[float, int]] | None:
        """(duration, value) pieces covering [start, end]; None if history begins after start."""
        if not self._points or self._points[0][0] > start:
            return None
        if end <= start:  # a zero-length window: the value in force at `end`
            return [(0.0, [v for t, v in self._points if t <= end][-1])]
        pieces = []
        for i, (t, value) in enumerate(self._points):
            until = self._points[i + 1][0] if i + 1 < len(self._points) else max(t, end)
            lo, hi = max(t, start), min(until, end)
            if hi > lo or t == end or (i + 1 == len(self._points) and t <= end):
                pieces.append((max(0.0, hi - lo), value))  # a value starting at `end` counts, weightless
        return pieces

    def average(self, start: float, end: float) -> float | None:
        pieces = self._segments(start, end)
        if pieces is None:
            return None
        span = sum(d for d, _ in pieces)
        if span == 0:  # a zero-length window
            return float(pieces[-1][1])
        return sum(d * v for d, v in pieces) / span

    def peak(self, start: float, end: float) -> int | None:
        pieces = self._segments(start, end)
        return None if pieces is None else max(v for _, v in pieces)


class ExecutorScaler:
    """Decides the pool's size from its in-flight history (see the module docstring)."""

    def __init__(self, config: ExecutorAutoscalingConfig) -> None:
        self.config = config
        self.history = InFlightHistory()
        self._last_at: float | None = None

    def record(self, now: float, in_flight: int) -> None:
        self.history.record(now, in_flight)
        c = self.config
        self.history.forget_before(now - max(c.upscale_delay_s, c.downscale_delay_s))

    def decide(self, now: float, size: int) -> ScalingDecision | None:
        """The desired size, or None if the last decision is less than interval_s old."""
        c = self.config
        if self._last_at is not None and now - self._last_at < c.interval_s:
            return None
        self._last_at = now
        average = self.history.average(now - c.upscale_delay_s, now)

        def decision(desired: int, reason: str) -> ScalingDecision:
            return ScalingDecision(at_s=now, size=size, desired=desired,
                                   average_in_flight=average, reason=reason)

        if size < c.min_executors:
            return decision(c.min_executors, f"below min_executors ({c.min_executors})")
        if size > c.max_executors:
            return decision(c.max_executors, f"above max_executors ({c.max_executors})")
        if average is not None and average > c.target_in_flight * size:
            wanted = math.ceil(average / c.target_in_flight)
            desired = min(c.max_executors, wanted)
            if desired > size:
                return decision(desired, f"{average:.2f} calls in flight on average over "
                                f"{c.upscale_delay_s:g} s exceed {c.target_in_flight:g} x {size}")
        peak = self.history.peak(now - c.downscale_delay_s, now)
        if peak is not None:
            desired = max(c.min_executors, math.ceil(peak / c.target_in_flight))
            if desired < size:
                return decision(desired, f"at most {peak} calls in flight over {c.downscale_delay_s:g} s: "
                                f"{desired} at {c.target_in_flight:g} each is enough")
        if average is None or peak is None:
            return decision(size, "not enough history yet")
        return decision(size, "load within target")


class ScalingEvent(BaseModel):
    """A change of the executor pool's size (or an attempt): when, from what to what, and why."""

    at: datetime
    from_size: int
    to_size: int = Field(description="Executors afterwards (short of `desired` if busy or unplaced).")
    desired: int
    reason: str


class ExecutorPoolStatus(BaseModel):
    """The executor pool as it stands, for tests, benchmarks and operators."""

    size: int = Field(description="Executors in the pool now.")
    in_flight: int = Field(description="Tool calls in flight now.")
    min_executors: int
    max_executors: int
    autoscaling: bool = Field(description="False: a fixed pool (min = max = size).")
    decisions: list[ScalingEvent] = Field(description="The last size changes, oldest first.")
