"""Ray actors: thin shells around the plain classes in agents/, policy/ and tools/."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import ray

from opsagent.agents.case import Case
from opsagent.agents.engines.base import PlannerEngine
from opsagent.agents.executor import Executor
from opsagent.agents.planner import Planner, PlannerTurn
from opsagent.agents.playbooks import Playbook
from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.agents.tracing.otlp import OtlpConfig, OtlpExporter
from opsagent.agents.tracing.records import TraceEvent
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.cluster.metrics import Metrics
from opsagent.cluster.observe import (
    is_unsupervised_high_risk, record_approvals, record_decision, record_tool_call, record_turn,
)
from opsagent.cluster.webhooks import ApprovalWatch, DeliveryLog, WebhookConfig, WebhookNotifier
from opsagent.errors import ApprovalError, AuthError, AutonomyError, ConfigError, TraceError
from opsagent.policy.approvals import ApprovalRequest, ApprovalStore
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.config import PolicyConfig
from opsagent.policy.credentials import CredentialCheck
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.gates import GateWatch
from opsagent.policy.identity import Identity, Role, TokenStore, require
from opsagent.policy.ledger import SpendLedger
from opsagent.policy.modes import ClassMode, ModeChange
from opsagent.policy.permit_uses import PermitUses
from opsagent.policy.state import state_db
from opsagent.policy.permits import (
    PermitSigner, PermitVerifier, load_or_create_signer, permit_key_from_env, public_keys_from_env,
)
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest
from opsagent.policy.refusals import Refusal, RefusalLog
from opsagent.policy.service import PolicyService
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult


@ray.remote
class PlannerActor:
    """Hosts one planner engine; async, so concurrent cases' calls reach the engine together."""

    def __init__(self, engine: PlannerEngine, playbooks: dict[str, Playbook],
                 registry: ToolRegistry, options: dict[str, Any] | None = None,
                 engine_metrics: bool = True) -> None:
        """`options`: the `Planner`'s keyword arguments (`PlannerConfig.planner_options()`);
        `engine_metrics`: a vLLM engine records its own metrics through Ray too."""
        self._planner = Planner(engine, playbooks, registry, **(options or {}))
        self._started: asyncio.Task | None = None
        self._engine_metrics = engine_metrics
        self._metrics = Metrics(["opsagent_planner_calls_total", "opsagent_planner_errors_total",
                                 "opsagent_planner_tokens_total", "opsagent_planner_latency_seconds"])

    async def start(self) -> str:
        """Load the engine (once; a restarted replica loads it on its first call)."""
        if self._started is None:
            engine = self._planner.engine
            if self._engine_metrics and hasattr(engine, "ray_metrics"):
                engine.ray_metrics = True
            self._started = asyncio.get_running_loop().create_task(self._planner.engine.start())
        await asyncio.shield(self._started)
        return self._planner.engine.model

    async def warm_up(self, allowed_tools: dict[str, list[str]]) -> int:
        await self.start()
        return await self._planner.warm_up(allowed_tools)

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        await self.start()
        turn = await self._planner.plan(case, allowed_tools)
        record_turn(self._metrics, self._planner.engine.model, turn)
        return turn

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        await self._planner.engine.close()


@ray.remote
class PolicyActor:
    """The one place tool calls are decided, held actions approved and classes' autonomy modes
    set; every decision carries the policy version and the mode. Approvals, modes and the ledger
    are kept in the state database (`state_url`; default state_dir/state.sqlite), so replicas of
    this actor on one PostgreSQL database share limits and approvals. Given the trace
    root and `gate_check_interval_s`, a `GateWatch` demotes classes below their gate on its own.

    Trust: the permit signing key is loaded here and never leaves this process (`permit_key`: its
    PEM file; default OPSAGENT_PERMIT_SIGNING_KEY, else state_dir/permit-signing-key.pem, created
    on first start); others get `public_keys()`. Approvals, mode changes, reloads and submitter
    records take a `Credential` (the caller's API token) that this actor authenticates against
    the token store (`tokens_path`, default the state database); any other caller is refused,
    and every refusal is logged (state_dir/refusals.sqlite, `refusals()`), changing nothing else.
    """

    def __init__(self, policy: PolicyConfig, registry: ToolRegistry, state_dir: str,
                 permit_key: str | None = None, approval_ttl_s: float = 86400.0,
                 traces_dir: str | None = None, gate_check_interval_s: float | None = None,
                 tokens_path: str | None = None, *, state_url: str | None = None,
                 webhook: WebhookConfig | None = None, webhook_secret: str | None = None,
                 approval_check_interval_s: float | None = 15.0) -> None:
        state = Path(state_dir)
        database = state_url or state_db(state)
        signer = _signer(permit_key, state)
        store = ApprovalStore(database, ttl=timedelta(seconds=approval_ttl_s))
        autonomy = AutonomyStore(database)
        engine = PolicyEngine(policy, registry, ledger=SpendLedger(database),
                              permit_key=signer, autonomy=autonomy)
        self._service = PolicyService(engine, store)
        self._check = CredentialCheck(TokenStore(tokens_path or database))
        self._refusals = RefusalLog(state / "refusals.sqlite")
        # automatic demotion (policy/gates.py): periodically and after each approval decision
        self._gates = (GateWatch(partial(case_verdicts, traces_dir), autonomy, lambda: engine.config,
                                 interval_s=gate_check_interval_s).start()
                       if traces_dir and gate_check_interval_s else None)
        self._metrics = Metrics([
            "opsagent_policy_decisions_total", "opsagent_policy_denials_total",
            "opsagent_unsupervised_high_risk_actions", "opsagent_approvals_pending",
            "opsagent_approval_oldest_pending_age_seconds", "opsagent_approval_events_total",
            "opsagent_webhook_deliveries_total"])
        self._unsupervised = 0
        self._metrics.set("opsagent_unsupervised_high_risk_actions", 0)  # exported at 0 from the start
        self._notifier = None
        if webhook is not None:
            secret = webhook_secret or webhook.resolve_secret()
            self._notifier = WebhookNotifier(
                webhook, secret, DeliveryLog(state / "webhooks.sqlite"),
                on_attempt=lambda event, outcome: self._metrics.inc(
                    "opsagent_webhook_deliveries_total", event=event, outcome=outcome)).start()
        self._watch = ApprovalWatch(
            lambda: self._service.list_approvals("pending"), self._service.get_approval,
            self._notify if self._notifier is not None else None,
            lambda pending, now: record_approvals(self._metrics, pending, now),
            warning_s=webhook.expiry_warning_s if webhook is not None else 3600.0,
            interval_s=approval_check_interval_s or 15.0,
            watched=self._notifier.log.open_approvals() if self._notifier is not None else ())
        if approval_check_interval_s:
            self._watch.start()

    def public_keys(self) -> bytes:
        """The PEM public key executors verify permits with (never the private key)."""
        return self._service.engine.verifier.public_pem()

    def allowed_tools(self, exception_type: str) -> list[str]:
        return self._service.allowed_tools(exception_type)

    def authorize(self, request: ToolCallRequest) -> PolicyDecision:
        decision = self._service.authorize(request)
        approved = decision.risk == "high" and self._service.approvals.approved(
            request.case_id, request.step, decision.args_digest) is not None
        record_decision(self._metrics, request.exception_type, request.tool, decision, approved)
        if is_unsupervised_high_risk(decision, approved):
            self._unsupervised += 1
            self._metrics.set("opsagent_unsupervised_high_risk_actions", self._unsupervised)
            logging.getLogger(__name__).critical(
                "policy allowed high-risk %s in case %s step %d without an approval",
                request.tool, request.case_id, request.step)
        return decision

    def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                         preview: Any) -> ApprovalRequest:
        approval = self._service.request_approval(request, decision, preview)
        self._watch.watch(approval.approval_id)
        self._notify("approval.requested", approval)
        for old in approval.supersedes:
            self._notify("approval.expired", self._service.get_approval(old))
        return approval

    def get_approval(self, approval_id: str) -> ApprovalRequest:
        return self._service.get_approval(approval_id)

    def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]:
        withdrawn = self._service.withdraw_approvals(case_id, reason)
        for approval in withdrawn:
            self._notify("approval.expired", approval)
        return withdrawn

    def webhook_deliveries(self, approval_id: str | None = None) -> list[Any]:
        """The approval webhook's delivery log (empty without a webhook)."""
        return [] if self._notifier is None else self._notifier.log.list(approval_id=approval_id)

    def check_approvals(self) -> None:
        """Look at the pending approvals now (expiring, expired, metrics) instead of at the next tick."""
        self._watch.tick()

    def _notify(self, event: str, approval: ApprovalRequest) -> None:
        """Count the approval event and send it to the webhook, if any (in the background)."""
        if self._notifier is None:
            self._metrics.inc("opsagent_approval_events_total", event=event)
        elif self._notifier.notify(event, approval) is not None:
            self._metrics.inc("opsagent_approval_events_total", event=event)

    def settle(self, permit: Permit, *, executed: bool) -> str:
        return self._service.settle(permit, executed=executed)

    def reload(self, credential: Any, text: str) -> str:
        """Swap the policy for every decision from now on (in-flight cases included), as the
        admin `credential` names; `text` is policy YAML (never a path). Returns the version."""
        with self._guard("reload", "policy", credential) as who:
            require(who.identity, Role.admin)
            if not isinstance(text, str):
                raise ConfigError(f"a policy reload takes YAML text, got {type(text).__name__}")
            config = PolicyConfig.from_text(text)
            return self._service.reload(config)

    def autonomy_status(self) -> list[ClassMode]:
        """Each class's autonomy mode and its last change (who, why, when)."""
        return self._service.autonomy_status()

    def set_mode(self, exception_type: str, mode: str, credential: Any, reason: str,
                 expected: str | None = None) -> ModeChange:
        """Set a class's autonomy mode as the admin `credential` names, recorded with the reason;
        `expected`: the mode it was judged from (refused if it changed meanwhile)."""
        with self._guard("set_mode", exception_type, credential) as who:
            return self._service.set_mode(exception_type, mode, identity=who.identity, reason=reason,
                                          expected=expected)

    def record_submission(self, credential: Any, case_id: str) -> None:
        """The submitter `credential` names opened `case_id`: it may never approve that case."""
        with self._guard("record_submission", case_id, credential) as who:
            require(who.identity, Role.submitter)
            self._service.approvals.record_submitter(case_id, who.identity.name)

    def policy_config(self) -> PolicyConfig:
        """The policy in force, for read-only views (the API's autonomy evidence and gates)."""
        return self._service.engine.config

    def list_approvals(self, status: str | None = None) -> list[ApprovalRequest]:
        return self._service.list_approvals(status)

    def decide_approval(self, approval_id: str, credential: Any, approve: bool,
                        args_digest: str, reason: str | None = None) -> ApprovalRequest:
        """Approve or reject as the approver `credential` names (never a case's submitter). The
        same decision sent again is answered with the recorded one, announced only the first time."""
        asked_at = datetime.now(UTC)
        with self._guard("decide_approval", approval_id, credential) as who:
            decided = self._service.decide_approval(approval_id, identity=who.identity, approve=approve,
                                                    args_digest=args_digest, reason=reason)
        if decided.decided_at is not None and decided.decided_at < asked_at:
            return decided  # decided before this call: a retry whose first answer was lost
        self._notify("approval.decided", decided)
        if self._gates is not None:
            self._gates.nudge()  # never raises: the check runs in the watch's thread
        return decided

    def refusals(self, limit: int = 1000) -> list[Refusal]:
        """The latest refused calls, oldest first."""
        return self._refusals.list(limit)

    def version(self) -> str:
        return self._service.engine.version

    def pid(self) -> int:
        return os.getpid()

    @contextlib.contextmanager
    def _guard(self, operation: str, target: str, credential: Any) -> Any:
        """Authenticate `credential`; log any refusal (authentication, role, approval, mode or
        policy error) with who and why before it propagates. Nothing else is changed by one."""
        who = _Caller()
        try:
            who.identity = self._check.identify(credential)
            yield who
        except (AuthError, ApprovalError, AutonomyError, ConfigError) as err:
            name = who.identity.name if who.identity is not None else "unauthenticated"
            self._refusals.record(operation, str(target), name, f"{type(err).__name__}: {err}")
            raise


def stop_policy_threads(policy: PolicyActor) -> None:
    """Stop a policy actor instance's threads (the approval watch, the webhook notifier, the gate
    watch), each after the tick under way; deliveries not yet sent stay in the delivery log for
    the next start. Calling it twice is harmless.

    For an instance in this process (the in-process front door, tests). Deliberately not an actor
    method: any caller inside the cluster could call that, and a compromised case manager must
    not be able to switch off automatic demotion. On Ray the process ends with the actor; every
    write those threads make is one transaction, so stopping mid-tick loses nothing."""
    policy._watch.close()
    if policy._notifier is not None:
        policy._notifier.close()
    if policy._gates is not None:
        policy._gates.stop()


class _Caller:
    identity: Identity | None = None


def _signer(path: str | None, state: Path) -> PermitSigner:
    if path:
        return PermitSigner.from_file(path)
    return permit_key_from_env() or load_or_create_signer(state / "permit-signing-key.pem")


@ray.remote
class ExecutorActor:
    """Stateless but for its record of used permits: runs one tool call at a time (per request)
    and returns the observation. Holds the policy's public keys only (`public_keys`: PEM)."""

    def __init__(self, registry: ToolRegistry, public_keys: bytes, timeout_s: float = 10.0,
                 uses_path: str | None = None) -> None:
        verifier = PermitVerifier.from_pem(public_keys)
        if (extra := public_keys_from_env()) is not None:  # rotation: keys added since the start
            verifier = extra.merged(verifier)
        self._executor = Executor(registry, verifier, timeout=timeout_s,
                                  uses=PermitUses(uses_path) if uses_path else None)
        self._registry = registry
        self._metrics = Metrics(["opsagent_executor_calls_total", "opsagent_executor_errors_total",
                                 "opsagent_executor_latency_seconds"])

    async def execute(self, tool: str, args: dict[str, Any], case_id: str, step: int,
                      permit: Permit | None = None, dry_run: bool = False) -> ToolResult:
        result = await self._executor.execute(tool, args, case_id=case_id, step=step,
                                              permit=permit, dry_run=dry_run)
        record_tool_call(self._metrics, self._registry.get(tool).system, tool, result)
        return result

    def pid(self) -> int:
        return os.getpid()


@ray.remote
class TraceWriterActor:
    """Acknowledges trace events once they are in its write-ahead log (fsynced); publishes them as
    Parquet, exactly once, at least every `flush_every_s`; on start publishes what a killed
    predecessor left in the log."""

    def __init__(self, root: str, flush_every_s: float = 1.0, wal_dir: str | None = None,
                 otlp: OtlpConfig | None = None) -> None:
        """`otlp`: also send every acknowledged record as OpenTelemetry spans (best effort: the
        Parquet store is the record; a collector that is down loses spans, never events)."""
        self._writer = TraceWriter(root, wal_dir)  # recovers
        self._spans = OtlpExporter(otlp) if otlp is not None else None
        self._every = flush_every_s
        self._task: asyncio.Task | None = None

    async def export(self, events: Sequence[TraceEvent]) -> None:
        # in a thread: the fsync does not stall the actor, and concurrent exports share one fsync
        await asyncio.to_thread(self._writer.export, events)
        if self._spans is not None:
            try:  # only queues the spans: the SDK sends them from its own thread
                self._spans.export(events)
            except Exception as err:  # noqa: BLE001 - spans are a copy; the log has the events
                logging.getLogger(__name__).error("OTLP span export failed: %s", err)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def flush(self) -> None:
        await asyncio.to_thread(self._writer.flush)
        if self._spans is not None:
            await asyncio.to_thread(self._spans.flush)

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await asyncio.to_thread(self._writer.close)
        if self._spans is not None:
            await asyncio.to_thread(self._spans.close)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await asyncio.to_thread(self._writer.flush)
            except TraceError as err:  # e.g. disk full: events stay in the log, next tick retries
                logging.getLogger(__name__).error("trace publish failed: %s", err)
