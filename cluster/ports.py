"""Adapters that let the case runner talk to Ray actor handles as if they were plain objects.

Actors are created with `max_restarts`: a call that dies with its actor (killed, node gone) is
sent again once the actor is back, with a growing pause, for up to `RETRY_BUDGET_S`. That is
safe for every call here: reads are reads, a write carries its idempotency key (case:step), trace
events carry their ids (a duplicate delivery is kept once), and a policy decision is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from ray.exceptions import ActorUnavailableError, RayActorError

RETRY_BUDGET_S = 120.0  # a node's death is detected, and its actors rescheduled, within this
RETRY_PAUSE_S = 0.25


async def call_actor(pick: Callable[[], Any], method: str, *args: Any) -> Any:
    """`pick().method.remote(*args)`, sent again (to a fresh `pick()`) while the actor is dead or
    restarting, pausing 0.25 s, then twice that, up to 2 s, for at most RETRY_BUDGET_S; then
    the last failure is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_BUDGET_S
    pause = RETRY_PAUSE_S
    while True:
        try:
            return await getattr(pick(), method).remote(*args)
        except (RayActorError, ActorUnavailableError):
            if loop.time() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


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


PlannerHandle = PlannerPool


class PolicyHandle:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return await call_actor(lambda: self.handle, "allowed_tools", exception_type)

    async def decide(self, request: ToolCallRequest) -> PolicyDecision:
        return await call_actor(lambda: self.handle, "decide", request)

    async def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                               preview: Any) -> ApprovalRequest:
        return await call_actor(lambda: self.handle, "request_approval", request, decision, preview)

    async def get_approval(self, approval_id: str) -> ApprovalRequest:
        return await call_actor(lambda: self.handle, "get_approval", approval_id)

    async def settle(self, permit: Permit, *, executed: bool) -> str:
        return await call_actor(lambda: self.handle, "settle", permit, executed)


class ExecutorPool:
    """Round-robin over executor actors; a dead actor's call is sent again to the next one.

    Retrying a write is safe: it carries the same idempotency key, so the system of record
    applies it at most once.
    """

    def __init__(self, handles: Sequence[Any]) -> None:
        if not handles:
            raise ValueError("an executor pool needs at least one actor")
        self.handles = list(handles)
        self._next = itertools.cycle(range(len(self.handles)))

    async def execute(self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
                      permit: Permit | None = None, dry_run: bool = False) -> ToolResult:
        return await call_actor(lambda: self.handles[next(self._next)], "execute",
                                tool, args, case_id, step, permit, dry_run)


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
