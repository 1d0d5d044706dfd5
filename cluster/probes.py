"""Probes of a running `OpsAgentSystem` for benchmarks (`evals/bench/soak.py`): each actor's
process id, the executor pool's size over time, and an admin's autonomy mode change, so the
benchmark itself does not call Ray."""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel, Field

from opsagent.cluster.system import OpsAgentSystem
from opsagent.policy.credentials import Credential


class PoolSample(BaseModel):
    """The executor pool at one moment of the run."""

    t_s: float = Field(description="Seconds since the first submission.")
    executors: int
    in_flight: int = Field(description="Tool calls in flight then.")


class PoolWatch:
    """Samples the executor pool from the case manager; executors it adds join the memory
    sampling as `executor <n>` (n in order of appearance)."""

    def __init__(self, cases: Any, pids: dict[str, int], out: list[PoolSample]) -> None:
        self._cases, self._pids, self.out = cases, pids, out
        self._known = set(pids.values())

    async def sample(self, t_s: float) -> dict[str, int]:
        """Record the pool's size; the pids of executors not seen before, by label."""
        try:
            status = await self._cases.executor_pool.remote()
        except ray.exceptions.RayError:  # the case manager restarting: no sample this time
            return {}
        self.out.append(PoolSample(t_s=round(t_s, 1), executors=status.size, in_flight=status.in_flight))
        new: dict[str, int] = {}
        for handle in await self._cases.executor_handles.remote():
            try:
                pid = await handle.pid.remote()
            except ray.exceptions.RayError:  # removed (or restarting) meanwhile
                continue
            if pid not in self._known:
                self._known.add(pid)
                label = f"executor {sum(1 for n in self._pids if n.startswith('executor '))}"
                self._pids[label] = pid
                new[label] = pid
        return new



def actor_pids(system: OpsAgentSystem) -> dict[str, int]:
    """Each actor's process id, by label (case manager, policy, trace writer, planner n, executor n)."""
    h = system.handles
    named = {"case manager": h["cases"], "policy": h["policy"], "trace writer": h["tracer"]}
    named |= {f"planner {i}": p for i, p in enumerate(h["planners"])}
    named |= {f"executor {i}": e for i, e in enumerate(h["executors"])}
    return dict(zip(named, ray.get([a.pid.remote() for a in named.values()]), strict=True))


def set_mode(system: OpsAgentSystem, exception_type: str, mode: str, admin: Credential, reason: str) -> None:
    """Change a class's autonomy mode through the policy actor (an admin's credential)."""
    ray.get(system.handles["policy"].set_mode.remote(exception_type, mode, admin, reason))
