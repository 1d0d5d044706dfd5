"""`opsagent demo`: the whole system on one machine, on the embedded model, end to end.

Starts the sandbox platform and injects weight-mismatch exceptions, starts Ray, the planner (vLLM),
policy, executors, trace writer and the Serve front door, submits every exception over HTTP,
waits for each case to reach a definite status and prints a summary read back from the traces.

The shipped policy starts every class in shadow mode (autonomy is earned, see policy/autonomy.py);
so that the demo resolves cases, a demo admin promotes weight_mismatch to autonomous first, as a
recorded admin action.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import ray

from opsagent.agents.tracing.report import demo_summary
from opsagent.cluster.client import OpsAgentClient
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.runtime import private_tmpdir, start_ray, stop_ray
from opsagent.cluster.system import OpsAgentSystem
from opsagent.errors import ApiBusy
from opsagent.policy.credentials import Credential
from opsagent.policy.identity import Role, TokenStore
from opsagent.policy.modes import Mode
from opsagent.progress import CaseProgress
from opsagent.tools.platform.launcher import Platform
from opsagent.tools.platform.scenarios import InjectedException, inject_weight_mismatch

WAITING = {"received", "planning", "executing"}
PAGE = 200
"""Most case ids one list request asks for (the API's page limit)."""


def submit_all(client: OpsAgentClient, instances: list[InjectedException], *,
               deadline: float | None = None) -> dict[str, InjectedException]:
    """POST every exception to the front door; returns case id -> the instance it came from.
    Each submission has an idempotency key, so a 429 or 503 is waited out and retried (until
    `deadline`) without making a second case."""
    batch = uuid.uuid4().hex[:12]
    return {client.submit(i.exception_type, i.description, i.entities, idempotency_key=f"demo-{batch}-{n}",
                          deadline=deadline)["case_id"]: i
            for n, i in enumerate(instances)}


def wait_all(client: OpsAgentClient, case_ids: list[str], timeout_s: float, *, interval_s: float = 1.0,
             on_poll: Callable[[dict[str, str]], None] | None = None) -> dict[str, dict]:
    """Follow the cases until every one is final or awaiting approval, or the time is up; returns
    each case's last summary (as `GET /v1/cases` lists it).

    One list request per `interval_s` asks for the cases still running (by id, up to `PAGE` per
    request), so the request rate does not grow with the number of cases. A 429 or 503 is waited
    out for its whole Retry-After while the deadline allows; past the deadline the cases still
    running are left as they were last seen. `on_poll` gets every case's status after each poll."""
    deadline = time.monotonic() + timeout_s
    views: dict[str, dict] = {}
    pending = list(case_ids)
    while pending:
        try:
            for start in range(0, len(pending), PAGE):
                page = client.cases(case_id=pending[start:start + PAGE], limit=PAGE, deadline=deadline)
                views.update({c["case_id"]: c for c in page["items"]})
        except ApiBusy:  # the API asks for a longer wait than the deadline leaves
            break
        pending = [cid for cid in case_ids if views.get(cid, {}).get("status", "received") in WAITING]
        if on_poll is not None:
            on_poll({cid: views.get(cid, {}).get("status", "received") for cid in case_ids})
        if not pending or time.monotonic() + interval_s > deadline:
            break
        time.sleep(interval_s)
    return views


def promote_for_demo(system: OpsAgentSystem, exception_type: str = "weight_mismatch") -> str:
    """Set the class to autonomous as an admin of the demo (authenticated by a token made for it),
    recorded in the autonomy history with a "demo: ..." reason; returns a line saying so."""
    admin = Credential.of(TokenStore(system.tokens_path).add("demo-admin", [Role.admin]))
    change = ray.get(system.handles["policy"].set_mode.remote(
        exception_type, Mode.autonomous.value, admin,
        "demo: no shadow or supervised evidence on a fresh sandbox; promoted so that the demo writes"))
    return (f"autonomy: {exception_type} {change.from_mode or '-'} -> {change.to_mode} by {change.actor} "
            f"({change.reason})")


def check_records(base_urls: dict[str, str], submitted: dict[str, InjectedException],
                  views: dict[str, dict]) -> str:
    """Read the carrier back: every resolved case must have an open dispute claiming the scan."""
    resolved = [cid for cid in submitted if views.get(cid, {}).get("status") == "resolved"]
    good = 0
    with httpx.Client(base_url=base_urls["tms"], timeout=10) as client:
        for cid in resolved:
            inst = submitted[cid]
            shipment = client.get(f"/shipments/{inst.entities['shipment_id']}").json()
            if shipment.get("open_dispute_id"):
                dispute = client.get(f"/weight-disputes/{shipment['open_dispute_id']}").json()
                good += dispute.get("claimed_weight_kg") == inst.facts.get("scanned_weight_kg")
    return f"{good}/{len(resolved)} resolved cases have an open dispute claiming the scanned weight"


def run_demo(*, cases: int, traces: Path, seed: int, config_path: Path | None, port: int,
             timeout_s: float, progress: bool = False) -> int:
    """Run the demo; `progress` draws a live line of the cases (see opsagent.progress)."""
    config = SystemConfig.from_yaml(config_path) if config_path else SystemConfig()
    traces.mkdir(parents=True, exist_ok=True)
    with private_tmpdir() as scratch, Platform(Path(scratch) / "platform") as platform:
        update: dict = {"traces_dir": traces}
        if config.planner.warm_classes is None:  # the demo submits weight mismatches only
            update["planner"] = config.planner.model_copy(update={"warm_classes": ["weight_mismatch"]})
        if config_path is None:  # the demo's approvals and tokens live and die with it
            update["state_dir"] = Path(scratch) / "state"
        config = config.model_copy(update=update)
        instances = inject_weight_mismatch(platform.base_urls, count=cases, seed=seed)
        print(f"platform up: {platform.base_urls}; injected {len(instances)} weight mismatches")
        start_ray(num_cpus=2)
        system = OpsAgentSystem(config, platform.registry())
        try:
            system.start(say=lambda line: print(line, flush=True))  # what start-up is doing, as it goes
            base_url = system.serve(port=port)
            print(promote_for_demo(system))
            token = TokenStore(system.tokens_path).add("demo-ops", [Role.submitter, Role.auditor])
            with OpsAgentClient(base_url, token) as client:
                deadline = time.monotonic() + timeout_s
                submitted = submit_all(client, instances, deadline=deadline)
                print(f"submitted {len(submitted)} exceptions to {base_url}/v1/exceptions; "
                      "following them with one list request a second", flush=True)
                with CaseProgress(len(submitted), "demo", enabled=progress) as bar:
                    views = wait_all(client, list(submitted), max(0.0, deadline - time.monotonic()),
                                     on_poll=lambda statuses: bar.show(statuses, lambda s: s not in WAITING))
            system.flush_traces()
            records = check_records(platform.base_urls, submitted, views)
        finally:
            system.stop()
            stop_ray()
    lost = [cid for cid in submitted if views.get(cid, {}).get("status") in (None, *WAITING)]
    correct = sum(views[cid]["status"] == inst.expected_status for cid, inst in submitted.items()
                  if cid in views)
    print(demo_summary(traces, case_ids=list(submitted)))
    print(f"outcome as gold (resolved vs escalated): {correct}/{len(submitted)}")
    print(f"system of record: {records}")
    if lost:
        print(f"NOT FINISHED in {timeout_s:.0f} s: {len(lost)} case(s): {', '.join(lost)}")
        return 1
    return 0
