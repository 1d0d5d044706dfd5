"""What the API and the console do, with the role checks, over the case manager and policy actors.

Both front ends call this one class, so a rule holds for both. Who may do what:

| operation                                  | submitter | approver            | auditor | admin |
|--------------------------------------------|-----------|---------------------|---------|-------|
| submit an exception                        | yes       |                     |         | yes   |
| read exceptions, cases, timelines          | own       | cases that asked one| all     | all   |
| cancel a case                              | own       |                     |         | all   |
| read approvals, overview, policy version   |           | yes                 | yes     | yes   |
| approve or reject                          |           | yes                 |         | yes   |
| read autonomy modes and their evidence     |           | yes                 | yes     | yes   |
| replace the policy, change autonomy modes  |           |                     |         | yes   |
| list, create and revoke API tokens         |           |                     |         | yes   |

A case the caller may not read is answered as unknown (404), so its existence does not leak.
Approvals, mode changes and reloads also pass the caller's `Credential` to the policy actor,
which authenticates it itself: the checks here are for clear answers, the policy's are the
boundary. Submissions are recorded with the policy the same way (separation of duties).
Actors are called through `cluster/actor_calls.py` without retries; an error raised in an actor
comes back as the opsagent error it was.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from opsagent.agents.case import CaseStatus, ExceptionReport
from opsagent.cluster.actor_calls import call_actor
from opsagent.cluster.api.models import ApprovalContext, Overview, TimelineEntry
from opsagent.cluster.api.trace_reads import TraceReads
from opsagent.cluster.case_query import CaseQuery, ReadScope
from opsagent.cluster.case_records import CaseEntry, CasePage, Submission
from opsagent.errors import AutonomyError, CaseNotFound, CaseStateError, ConfigError, InputError
from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus
from opsagent.policy.config import PolicyConfig
from opsagent.policy.credentials import Credential
from opsagent.policy.gates import ClassStatus, gate_mode_change
from opsagent.policy.identity import Identity, IssuedToken, Role, TokenInfo, TokenStore, require
from opsagent.policy.modes import ClassMode, Mode, ModeChange

ask = partial(call_actor, retry_s=0)
"""An actor call from the front door: an actor out of reach is answered at once (503), nothing is
sent twice; an opsagent error raised in the actor comes back as itself."""
READERS = (Role.submitter, Role.approver, Role.auditor)
HEALTH_TTL_S = 1.0
WATCHERS = (Role.approver, Role.auditor)


class OpsService:
    """The operations of the front door, for an authenticated identity."""

    def __init__(self, cases: Any, policy: Any, traces: TraceReads, tokens: TokenStore | None = None) -> None:
        self.cases, self.policy, self.traces, self.tokens = cases, policy, traces, tokens
        self._health: tuple[float, int] | None = None

    # exceptions and cases

    async def submit(self, who: Identity, report: ExceptionReport,
                     idempotency_key: str | None = None, credential: Credential | None = None) -> Submission:
        """Open a case; with `credential`, the policy records `who` as its submitter (never its
        approver) before the answer goes back."""
        require(who, Role.submitter)
        submission: Submission = await ask(self.cases, "submit", report, who.name, idempotency_key)
        if credential is not None:
            await ask(self.policy, "record_submission", credential, submission.entry.case.case_id)
        return submission

    async def cases_page(self, who: Identity, query: CaseQuery, mode: Mode | None = None) -> CasePage:
        """Cases `who` may read; `mode` keeps those of the classes now in that autonomy mode."""
        require(who, *READERS)
        update: dict[str, Any] = {"readable_by": _scope(who)}
        if mode is not None:
            in_mode = [m.exception_type for m in await ask(self.policy, "autonomy_status") if m.mode == mode]
            wanted = query.exception_types
            update["exception_types"] = [c for c in in_mode if wanted is None or c in wanted]
        return await ask(self.cases, "page", query.model_copy(update=update))

    async def case(self, who: Identity, case_id: str) -> CaseEntry:
        require(who, *READERS)
        entry: CaseEntry = await ask(self.cases, "entry", case_id)
        if not _scope(who).admits(entry):
            raise CaseNotFound(case_id)
        return entry

    async def classes(self, who: Identity) -> list[str]:
        """Exception classes with cases, for the console's filters."""
        require(who, *READERS)
        return await ask(self.cases, "classes")

    async def timeline(self, who: Identity, case_id: str) -> list[TimelineEntry]:
        await self.case(who, case_id)
        return await self.traces.timeline(case_id)

    async def cancel(self, who: Identity, case_id: str, reason: str | None) -> CaseEntry:
        require(who, Role.submitter)
        entry = await self.case(who, case_id)
        if Role.admin not in who.roles and entry.submitted_by != who.name:  # own cases only
            raise CaseNotFound(case_id)
        return await ask(self.cases, "cancel", case_id, who.name, reason)

    # approvals

    async def approvals(self, who: Identity, status: ApprovalStatus | None) -> list[ApprovalRequest]:
        require(who, *WATCHERS)
        return await ask(self.policy, "list_approvals", status.value if status else None)

    async def approval(self, who: Identity, approval_id: str) -> ApprovalContext:
        require(who, *WATCHERS)
        approval: ApprovalRequest = await ask(self.policy, "get_approval", approval_id)
        return await self._context(approval)

    async def pending_with_context(self, who: Identity) -> list[ApprovalContext]:
        """The approval queue as the console shows it: every pending action with its case."""
        pending = await self.approvals(who, ApprovalStatus.pending)
        return list(await asyncio.gather(*(self._context(a) for a in pending)))

    async def decide(self, who: Identity, approval_id: str, *, approve: bool, args_digest: str,
                     reason: str | None, credential: Credential) -> ApprovalRequest:
        """Approve or reject a held action shown with `args_digest`; the case then resumes.
        Refused (409) unless the case still waits for exactly this approval."""
        require(who, Role.approver)
        if not approve and not (reason and reason.strip()):
            raise InputError("a rejection needs a reason (the planner is told it)")
        approval: ApprovalRequest = await ask(self.policy, "get_approval", approval_id)
        context = await self._context(approval)
        if approval.status == ApprovalStatus.pending and not context.decidable:
            raise CaseStateError(f"case {approval.case_id} is {context.case_status or 'unknown'}; "
                                 f"nothing waits for {approval_id}")
        # Once sent, the decision and the resume after it run to the end even if the caller goes
        # away (Serve cancels the request of a client that disconnected, e.g. on its own timeout):
        # a decision recorded without its resume would leave the case waiting for an approval
        # already given.
        return await asyncio.shield(self._decide(approval_id, credential, approve, args_digest, reason))

    async def _decide(self, approval_id: str, credential: Credential, approve: bool, args_digest: str,
                      reason: str | None) -> ApprovalRequest:
        decided: ApprovalRequest = await ask(self.policy, "decide_approval", approval_id, credential, approve,
                                             args_digest, reason)
        await ask(self.cases, "resume", decided.case_id)
        return decided

    async def _context(self, approval: ApprovalRequest) -> ApprovalContext:
        try:
            entry: CaseEntry | None = await ask(self.cases, "entry", approval.case_id)
        except CaseNotFound:
            entry = None
        steps = entry.case.steps if entry else []
        held = next((s for s in steps if s.approval_id == approval.approval_id), None)
        waiting = (entry is not None and entry.case.status == CaseStatus.awaiting_approval
                   and steps and steps[-1].approval_id == approval.approval_id)
        return ApprovalContext(
            approval=approval, case_status=entry.case.status.value if entry else None,
            description=entry.case.report.description if entry else None,
            entities=entry.case.report.entities if entry else {},
            evidence=held.evidence if held else {},
            reads=[s.tool for s in steps if s.executed and s.ok and held and s.step < held.step],
            decidable=bool(waiting) and approval.status == ApprovalStatus.pending,
        )

    # autonomy

    async def autonomy(self, who: Identity) -> list[ClassStatus]:
        """Each class's mode, the evidence of its stage and whether it may move up."""
        require(who, *WATCHERS)
        modes: list[ClassMode] = await ask(self.policy, "autonomy_status")
        config: PolicyConfig = await ask(self.policy, "policy_config")
        return await self.traces.autonomy(modes, config)

    async def set_mode(self, who: Identity, exception_type: str, mode: Mode, reason: str,
                       override: bool = False, *, credential: Credential) -> ModeChange:
        """Set a class's autonomy mode (admins), recorded with who and why, through the gates'
        rule (`policy.gates.gate_mode_change`, as the CLI): down always, up one stage when the
        class is eligible, or with `override` (recorded in the reason). Refused: AutonomyError."""
        require(who, Role.admin)
        modes: list[ClassMode] = await ask(self.policy, "autonomy_status")
        config: PolicyConfig = await ask(self.policy, "policy_config")
        current = next((m for m in modes if m.exception_type == exception_type), None)
        if current is None or exception_type not in config.classes:
            raise AutonomyError(f"unknown exception class {exception_type!r} (policy lists: "
                                f"{', '.join(sorted(config.classes)) or 'none'})")
        status = None
        if mode.rank > current.mode.rank:  # only a promotion is judged on the evidence (traces read)
            statuses = await self.traces.autonomy(modes, config)
            status = next((s for s in statuses if s.exception_type == exception_type), None)
        recorded = gate_mode_change(exception_type, current.mode, mode, reason=reason, override=override,
                                    status=status)
        return await ask(self.policy, "set_mode", exception_type, mode.value, credential, recorded,
                         current.mode.value)

    # API tokens

    def _token_store(self, who: Identity) -> TokenStore:
        require(who, Role.admin)
        if self.tokens is None:
            raise ConfigError("this front door has no token store")
        return self.tokens

    async def list_tokens(self, who: Identity) -> list[TokenInfo]:
        return self._token_store(who).listing()

    async def create_token(self, who: Identity, name: str, roles: list[Role],
                           expires_s: float | None) -> IssuedToken:
        return self._token_store(who).create(name, roles, expires_s=expires_s)

    async def revoke_token(self, who: Identity, ref: str) -> list[TokenInfo]:
        return self._token_store(who).revoke(ref, by=who.name)

    # policy, overview, health

    async def policy_version(self, who: Identity) -> str:
        require(who, *WATCHERS)
        return await ask(self.policy, "version")

    async def reload_policy(self, who: Identity, text: str, *, credential: Credential) -> str:
        """Replace the policy with `text` (YAML, never a path: nothing is read from disk)."""
        require(who, Role.admin)
        try:
            PolicyConfig.from_text(text)  # a clear 422 before the policy parses it again itself
            return await ask(self.policy, "reload", credential, text)
        except ConfigError as exc:
            raise InputError(str(exc)) from exc

    async def overview(self, who: Identity) -> Overview:
        require(who, *WATCHERS)
        figures = await self.traces.overview()
        pending = await ask(self.policy, "list_approvals", ApprovalStatus.pending.value)
        return Overview(open_approvals=len(pending), **figures)

    async def open_cases(self) -> int:
        """The case manager's count of open cases, asked at most once per HEALTH_TTL_S."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] >= HEALTH_TTL_S:
            self._health = (now, await ask(self.cases, "open_cases"))
        return self._health[1]


def _scope(who: Identity) -> ReadScope:
    """The cases `who` may read."""
    if who.has(Role.auditor):
        return ReadScope(everything=True)
    return ReadScope(submitter=who.name if Role.submitter in who.roles else None,
                     approvals=Role.approver in who.roles)

