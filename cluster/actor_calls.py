"""The one way cluster code calls an actor: `call_actor` retries while the actor is dead or
restarting, and gives back an opsagent error raised inside the actor as itself (Ray wraps it).

Actors are created with `max_restarts`: a call that dies with its actor (killed, node gone) is
sent again once the actor is back, with a growing pause, for up to `retry_s` (the case runner's
calls: `RETRY_BUDGET_S`). That is safe for every call the runner makes: reads are reads, a write
carries its idempotency key (case:step), trace events carry their ids (a duplicate delivery is
kept once), and a policy decision is asked again. The front door passes `retry_s=0`: an actor out
of reach is answered at once (503), and a submission or a decision is never sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FunctionType
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

from opsagent.errors import OpsAgentError

RETRY_BUDGET_S = 120.0  # a node's death is detected, and its actors rescheduled, within this
RETRY_PAUSE_S = 0.25


async def call_actor(target: Any | Callable[[], Any], method: str, *args: Any,
                     retry_s: float = RETRY_BUDGET_S, **kwargs: Any) -> Any:
    """`handle.method.remote(*args, **kwargs)` for `target`, an actor handle or a function picking
    one (a pool: asked again for each attempt). Sent again while the actor is dead or restarting,
    pausing 0.25 s, then twice that, up to 2 s, for at most `retry_s`; then the last failure is
    raised. An `OpsAgentError` raised in the actor is raised here as itself."""
    pick = target if isinstance(target, FunctionType) else (lambda: target)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_s
    pause = RETRY_PAUSE_S
    while True:
        try:
            return await getattr(pick(), method).remote(*args, **kwargs)
        except (RayActorError, ActorUnavailableError):
            if loop.time() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, OpsAgentError):
                raise cause from None
            raise


class ActorPort:
    """Any actor behind the case runner's async port of its component (`agents/ports.py`):
    `port.name(*args, **kwargs)` is `call_actor(handle, "name", ...)`, so the actor's own methods
    are the only Ray-side statement of the interface (the policy: `PolicyActor`)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await call_actor(self.handle, name, *args, **kwargs)

        call.__name__ = name
        return call
