"""The Ray side of the case runner's ports (`agents/ports.py`) that need more than `ActorPort`:
planner replicas and executors in pools (least loaded first), the executor factory, and trace
export with a tally of acknowledged events. Every call goes through `actor_calls.call_actor`
(retried while an actor restarts; see there why that is safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ray
from pydantic import BaseModel

from opsagent.cluster.actor_calls import call_actor
from opsagent.cluster.actors import ExecutorActor
from opsagent.cluster.config import ExecutorAutoscalingConfig
from opsagent.cluster.executor_scaling import ExecutorPoolStatus, ExecutorScaler, ScalingEvent

if TYPE_CHECKING:  # annotations only
    from opsagent.agents.case import Case
    from opsagent.agents.planner import PlannerTurn
    from opsagent.agents.tracing.records import TraceEvent
    from opsagent.policy.records import Permit
    from opsagent.tools.spec import ToolResult

class PlannerPool:
    """Planner replicas: each call goes to the replica with the fewest calls in flight (ties in
    turn); a call whose replica died is sent again, to whichever replica is least loaded then."""

    def __init__(self, handles: Sequence[Any] | Any) -> None:
        self.handles = list(handles) if isinstance(handles, list | tuple) else [handles]
        if not self.handles:
            raise ValueError("a planner pool needs at least one actor")
        self._in_flight = [0] * len(self.handles)
        self._turn = itertools.count()

    @property
    def handle(self) -> Any:
        return self.handles[0]

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        turn = next(self._turn)
        n = len(self.handles)
        index = min(range(n), key=lambda i: (self._in_flight[i], (i - turn) % n))
        self._in_flight[index] += 1
        try:
            return await call_actor(lambda: self.handles[index], "plan", case, allowed_tools)
        finally:
            self._in_flight[index] -= 1


class ExecutorFactory:
    """Creates executor actors with the system's placement (Ray actor options, restarts), named
    opsagent-executor-<n> with the next n not taken (a name still held by an actor that is
    going away is skipped). Picklable: the case manager gets one to grow its pool, so it holds
    the policy's public keys (PEM) only, never signing material."""

    def __init__(self, registry: Any, public_keys: bytes, timeout_s: float,
                 actor_options: dict[str, Any], first: int = 0, uses_path: str | None = None) -> None:
        if b"PRIVATE" in public_keys:
            raise ValueError("an executor factory takes the policy's public keys, never a private key")
        self._args = (registry, public_keys, timeout_s, uses_path)
        self._options = dict(actor_options)
        self._next = first

    def __call__(self) -> Any:
        while True:
            name = f"opsagent-executor-{self._next}"
            self._next += 1
            try:
                return ExecutorActor.options(name=name, **self._options).remote(*self._args)
            except ValueError as exc:  # the name is taken: try the next one
                if "already taken" not in str(exc):
                    raise


def _kill_for_good(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:  # already gone: nothing left to stop
        logging.getLogger(__name__).warning("executor pool: could not kill an executor: %s", exc)


class _Slot:
    __slots__ = ("handle", "in_flight", "removable", "suspect_until")

    def __init__(self, handle: Any, *, removable: bool) -> None:
        self.handle, self.in_flight, self.removable, self.suspect_until = handle, 0, removable, 0.0


class ExecutorPool:
    """Executor actors: each call goes to the one with the fewest calls in flight (ties in turn);
    a call whose actor died is sent again to the least loaded of the others (one that just
    failed is avoided for SUSPECT_S). Retrying a write is safe: it carries the same idempotency
    key, so the system of record applies it at most once.

    With `scaling` (and a `factory` of new actors) the pool resizes itself: a loop on the
    caller's event loop, started by the first call, asks an `ExecutorScaler` every interval_s;
    new actors join once they answer, a shrink removes idle actors it added (never one with a
    call in flight, never the ones it was given) and kills them for good.
    """

    SUSPECT_S = 2.0
    START_TIMEOUT_S = 60.0  # a new actor that is not up by then (no node offers its resources) is dropped
    DECISIONS_KEPT = 20

    def __init__(self, handles: Sequence[Any], *, factory: Callable[[], Any] | None = None,
                 scaling: ExecutorAutoscalingConfig | None = None,
                 kill: Callable[[Any], None] = _kill_for_good,
                 clock: Callable[[], float] = time.monotonic, loop: bool = True) -> None:
        if not handles:
            raise ValueError("an executor pool needs at least one actor")
        if scaling is not None and factory is None:
            raise ValueError("an autoscaled executor pool needs a factory of executor actors")
        self._slots = [_Slot(h, removable=False) for h in handles]
        self._turn = itertools.count()
        self._factory, self._kill, self._clock = factory, kill, clock
        self._scaling = scaling
        self._scaler = ExecutorScaler(scaling) if scaling is not None else None
        self._in_flight = 0
        self._events: deque[ScalingEvent] = deque(maxlen=self.DECISIONS_KEPT)
        self._task: asyncio.Task | None = None
        self._loop = loop  # False: no loop of its own, the caller drives `rescale()`
        self._observe()

    @property
    def handles(self) -> list[Any]:
        return [s.handle for s in self._slots]

    async def execute(self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
                      permit: Permit | None = None, dry_run: bool = False) -> ToolResult:
        if self._scaler is not None and self._loop and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._autoscale())
        slot: _Slot | None = None

        def pick() -> Any:
            nonlocal slot
            now = self._clock()
            if slot is not None:  # asked again: the call to this one died with its actor
                slot.in_flight -= 1
                slot.suspect_until = now + self.SUSPECT_S
            turn, n = next(self._turn), len(self._slots)
            index = min(range(n), key=lambda i: (self._slots[i].suspect_until > now,
                                                 self._slots[i].in_flight, (i - turn) % n))
            slot = self._slots[index]
            slot.in_flight += 1
            return slot.handle

        self._in_flight += 1
        self._observe()
        try:
            return await call_actor(pick, "execute", tool, args, case_id, step, permit, dry_run)
        finally:
            if slot is not None:
                slot.in_flight -= 1
            self._in_flight -= 1
            self._observe()

    def status(self) -> ExecutorPoolStatus:
        size = len(self._slots)
        c = self._scaling
        return ExecutorPoolStatus(
            size=size, in_flight=self._in_flight, autoscaling=c is not None,
            min_executors=c.min_executors if c else size, max_executors=c.max_executors if c else size,
            decisions=list(self._events))

    async def rescale(self) -> ScalingEvent | None:
        """Ask the scaler once and act on its answer; the event if the size was to change."""
        if self._scaler is None:
            return None
        decision = self._scaler.decide(self._clock(), len(self._slots))
        if decision is None or decision.desired == decision.size:
            return None
        if decision.desired > decision.size:
            note = await self._grow(decision.desired - decision.size)
        else:
            note = self._shrink(decision.size - decision.desired)
        event = ScalingEvent(at=datetime.now(UTC), from_size=decision.size, to_size=len(self._slots),
                             desired=decision.desired, reason=decision.reason + note)
        self._events.append(event)
        return event

    def _observe(self) -> None:
        if self._scaler is not None:
            self._scaler.record(self._clock(), self._in_flight)

    async def _autoscale(self) -> None:
        assert self._scaling is not None
        while True:
            await asyncio.sleep(self._scaling.interval_s)
            try:
                await self.rescale()
            except Exception:  # the loop must outlive one failed attempt; the next tick retries
                logging.getLogger(__name__).exception("executor pool: rescaling failed")

    async def _grow(self, count: int) -> str:
        assert self._factory is not None
        new: list[Any] = []
        failure = ""
        try:
            for _ in range(count):
                new.append(self._factory())
        except Exception as exc:  # e.g. bad actor options: keep the ones created
            failure = f" ({type(exc).__name__}: {exc})"

        async def ready(handle: Any) -> Any:
            await handle.pid.remote()
            return handle

        tasks = [asyncio.ensure_future(ready(h)) for h in new]
        done, pending = await asyncio.wait(tasks, timeout=self.START_TIMEOUT_S) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        up = [t.result() for t in tasks if t in done and t.exception() is None]
        self._slots += [_Slot(h, removable=True) for h in up]
        for handle in new:
            if not any(handle is h for h in up):
                self._kill(handle)
        if len(up) == count:
            return ""
        return f"; {count - len(up)} of {count} new executors did not start{failure}"

    def _shrink(self, count: int) -> str:
        idle = [s for s in reversed(self._slots) if s.removable and s.in_flight == 0][:count]
        for slot in idle:
            self._slots.remove(slot)
            self._kill(slot.handle)
        return "" if len(idle) == count else f"; {count - len(idle)} busy or started by the system, kept"


class TraceHandle:
    """Trace export; a batch whose writer died before acknowledging it is sent again (the same
    event ids: if the first delivery reached the log, readers keep one copy). Keeps a tally of
    the acknowledged events (a count and an order-free digest of their ids, constant size), so a
    test can check the store holds exactly those."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.tally = AckTally()

    async def export(self, events: Sequence[TraceEvent]) -> None:
        batch = list(events)
        await call_actor(lambda: self.handle, "export", batch)
        self.tally.add(e.event_id for e in batch)


class AckTally(BaseModel):
    """How many events were acknowledged, and the sum of their ids' hashes (mod 2^128): two
    tallies of the same set of ids are equal whatever the order."""

    count: int = 0
    digest: int = 0

    def add(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            self.count += 1
            self.digest = (self.digest + int.from_bytes(
                hashlib.sha256(event_id.encode()).digest()[:16], "big")) % 2 ** 128

    @classmethod
    def of(cls, event_ids: Iterable[str]) -> "AckTally":
        tally = cls()
        tally.add(event_ids)
        return tally
