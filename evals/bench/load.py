"""Closed-loop load over the opsagent API: keep `concurrency` cases in flight until all are done.

Submissions go to `POST /v1/exceptions`; one poller reads `GET /v1/cases` (newest first, one page
per poll whatever the concurrency, so polling does not take the cores the planner needs) and
submits the next case as soon as one reaches a definite status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field

from opsagent.errors import InputError, OpsAgentError
from opsagent.evals.catalogue import Instance

DONE = {"resolved", "escalated", "failed", "proposed", "awaiting_approval"}


class LevelRun(BaseModel):
    """What one concurrency level did: which case ran which instance, and the wall clock."""

    concurrency: int
    cases: dict[str, str] = Field(description="case id -> instance id, in submission order.")
    statuses: dict[str, str] = Field(description="case id -> the status it was seen to reach.")
    started_at: datetime
    finished_at: datetime
    wall_s: float = Field(description="First submission to the last case seen done.")
    timed_out: list[str] = Field(default_factory=list, description="Cases not done in time.")


class Api:
    """The two calls the load needs, with a bearer token; 429/503 are waited out."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(120):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= 5:
                    raise OpsAgentError(f"{method} {path}: {exc}") from exc
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code in (429, 503):
                time.sleep(min(float(response.headers.get("Retry-After") or 0.5), 5.0))
                continue
            if response.status_code >= 300:
                raise OpsAgentError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            return response.json()
        raise OpsAgentError(f"{method} {path}: still refused after 120 tries")

    def submit(self, inst: Instance) -> str:
        return self.call("POST", "/v1/exceptions", json={
            "exception_type": inst.exception_type, "description": inst.description,
            "entities": inst.entities})["case_id"]

    def statuses(self, wanted: set[str]) -> dict[str, str]:
        """Status of each wanted case, reading pages of the case list until all are found."""
        found: dict[str, str] = {}
        offset: int | None = 0
        while offset is not None and len(found) < len(wanted):
            page = self.call("GET", "/v1/cases", params={"limit": 200, "offset": offset})
            found |= {c["case_id"]: c["status"] for c in page["items"] if c["case_id"] in wanted}
            offset = page.get("next_offset")
        return found

    def case(self, case_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/cases/{case_id}")


def closed_loop(api: Api, instances: list[Instance], concurrency: int, *, poll_s: float = 0.1,
                timeout_s: float = 1800.0, on_poll: Callable[[dict[str, str]], None] | None = None) -> LevelRun:
    """Run every instance once with at most `concurrency` in flight, refilling as cases finish;
    `on_poll` gets the status of every case submitted so far after each poll (for progress)."""
    if concurrency < 1:
        raise InputError(f"concurrency must be >= 1, got {concurrency}")
    queue = list(instances)
    cases: dict[str, str] = {}
    statuses: dict[str, str] = {}
    in_flight: set[str] = set()
    started, t0 = datetime.now(UTC), time.monotonic()
    deadline = t0 + timeout_s
    while queue or in_flight:
        while queue and len(in_flight) < concurrency:
            inst = queue.pop(0)
            case_id = api.submit(inst)
            cases[case_id] = inst.instance_id
            in_flight.add(case_id)
        if time.monotonic() > deadline:
            break
        time.sleep(poll_s)
        for case_id, status in api.statuses(in_flight).items():
            statuses[case_id] = status
            if status in DONE:
                in_flight.discard(case_id)
        if on_poll is not None:
            on_poll(dict(statuses))
    wall = time.monotonic() - t0
    return LevelRun(concurrency=concurrency, cases=cases, statuses=statuses, started_at=started,
                    finished_at=datetime.now(UTC), wall_s=wall, timed_out=sorted(in_flight))
