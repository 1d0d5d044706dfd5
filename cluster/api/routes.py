"""The versioned REST API under /v1: exceptions, cases, approvals, policy, overview, health."""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from opsagent.agents.case import CaseStatus
from opsagent.cluster.api.auth import api_caller, api_credential
from opsagent.cluster.api.http_errors import ERROR_RESPONSES, ErrorBody
from opsagent.cluster.api.models import (
    IDEMPOTENCY_KEY, ApprovalContext, ApprovalDecision, CancelRequest, CaseSummary, CaseView,
    ExceptionView, Health, ModeRequest, Overview, Page, PolicyUpload, PolicyVersion, RejectDecision,
    SubmitRequest,
    SubmitResponse, TimelineEntry, TokenRequest,
)
from opsagent.cluster.api.service import OpsService
from opsagent.cluster.case_query import CaseQuery
from opsagent.cluster.case_records import CasePage
from opsagent.errors import IdempotencyConflict, InputError
from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus
from opsagent.policy.credentials import Credential
from opsagent.policy.gates import ClassStatus
from opsagent.policy.identity import Identity, IssuedToken, TokenInfo
from opsagent.policy.modes import Mode, ModeChange

Caller = Annotated[Identity, Depends(api_caller)]
Cred = Annotated[Credential, Depends(api_credential)]


def _service(request: Request) -> OpsService:
    return request.app.state.service


Service = Annotated[OpsService, Depends(_service)]

def _known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not take (a typo would else silently widen a list),
    and a single-valued one given twice (which value would count is not the caller's to guess)."""
    route = request.scope.get("route")
    known, lists = _query_names(route.dependant) if route is not None else (set(), set())
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InputError(f"unknown query parameter(s): {', '.join(map(repr, unknown))[:300]}"
                         f"; this route takes: {', '.join(sorted(known)) or 'none'}")
    keys = [key for key, _ in request.query_params.multi_items()]
    repeated = sorted({key for key in keys if keys.count(key) > 1} - lists)
    if repeated:
        raise InputError(f"query parameter(s) given more than once: {', '.join(map(repr, repeated))[:300]}"
                         " (only a list parameter may repeat)")


def _query_names(dependant: Any) -> tuple[set[str], set[str]]:
    """The route's query parameter names, and those of them that take a list."""
    names = {p.alias for p in dependant.query_params}
    lists = {p.alias for p in dependant.query_params if _is_list(p.field_info.annotation)}
    for sub in dependant.dependencies:
        more, more_lists = _query_names(sub)
        names, lists = names | more, lists | more_lists
    return names, lists


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return origin is not None and any(_is_list(arg) for arg in get_args(annotation))


v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, dependencies=[Depends(_known_query_only)])
_404 = {404: {"model": ErrorBody, "description": "Unknown (or not yours to see)."}}
_409 = {409: {"model": ErrorBody, "description": "Conflicts with the current state."}}


class CaseFilters:
    """Query parameters shared by the case and exception lists."""

    def __init__(
        self,
        status: CaseStatus | None = None,
        case_id: Annotated[list[str] | None, Query(
            max_length=200, description="Only these cases (repeat the parameter; up to 200), e.g. "
            "to follow a batch of submissions with one request.")] = None,
        mode: Annotated[Mode | None, Query(description="Classes now in this autonomy mode.")] = None,
        exception_type: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
        submitted_by: Annotated[str | None, Query(max_length=128)] = None,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> None:
        self.query = CaseQuery(status=status, case_ids=case_id, submitted_by=submitted_by, offset=offset, limit=limit,
                               exception_types=[exception_type] if exception_type else None)
        self.mode = mode


Filters = Annotated[CaseFilters, Depends()]


def _next(page: CasePage) -> int | None:
    end = page.offset + len(page.items)
    return end if end < page.total else None


@v1.post("/exceptions", status_code=202, response_model=SubmitResponse,
         responses={200: {"model": SubmitResponse, "description": "A retry: the case it made."},
                    **_409})
async def submit_exception(
    body: SubmitRequest, caller: Caller, service: Service, credential: Cred,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key",
                                                  pattern=IDEMPOTENCY_KEY)] = None,
) -> JSONResponse:
    """Open a case for an exception (202). With an `Idempotency-Key` (header or body field), a
    retry returns the case the first call made (200); the same key with a different body is 409."""
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise IdempotencyConflict("the Idempotency-Key header and the body's idempotency_key differ; "
                                  "send one key")
    submission = await service.submit(caller, body.report(), idempotency_key or body.idempotency_key,
                                      credential)
    case = submission.entry.case
    answer = SubmitResponse(case_id=case.case_id, status=case.status.value,
                            created=submission.created, links={
                                "case": f"/v1/cases/{case.case_id}",
                                "timeline": f"/v1/cases/{case.case_id}/timeline"})
    return JSONResponse(answer.model_dump(mode="json"), status_code=202 if submission.created else 200)


@v1.get("/exceptions", response_model=Page[ExceptionView])
async def list_exceptions(caller: Caller, service: Service, filters: Filters) -> Page[ExceptionView]:
    """Submitted exceptions you may read (submitters: their own), newest first."""
    page = await service.cases_page(caller, filters.query, filters.mode)
    return Page[ExceptionView](items=[ExceptionView.of(e) for e in page.items], total=page.total,
                               offset=page.offset, limit=page.limit, next_offset=_next(page))


@v1.get("/exceptions/{case_id}", response_model=ExceptionView, responses=_404)
async def get_exception(case_id: str, caller: Caller, service: Service) -> ExceptionView:
    """One exception as it was submitted (identified by the case opened for it)."""
    return ExceptionView.of(await service.case(caller, case_id))


@v1.get("/cases", response_model=Page[CaseSummary])
async def list_cases(caller: Caller, service: Service, filters: Filters) -> Page[CaseSummary]:
    """Cases you may read, newest first, filtered by status, class, submitter and case ids."""
    page = await service.cases_page(caller, filters.query, filters.mode)
    return Page[CaseSummary](items=[CaseSummary.of(e) for e in page.items], total=page.total,
                             offset=page.offset, limit=page.limit, next_offset=_next(page))


@v1.get("/cases/{case_id}", response_model=CaseView, responses=_404)
async def get_case(case_id: str, caller: Caller, service: Service) -> CaseView:
    """A case's status and every step."""
    return CaseView.of(await service.case(caller, case_id))


@v1.get("/cases/{case_id}/timeline", response_model=list[TimelineEntry], responses=_404)
async def case_timeline(case_id: str, caller: Caller, service: Service) -> list[TimelineEntry]:
    """Every traced record about a case, in time order (lags the live case by about a second)."""
    return await service.timeline(caller, case_id)


@v1.post("/cases/{case_id}/cancel", status_code=202, response_model=CaseView,
         responses={**_404, **_409})
async def cancel_case(case_id: str, body: CancelRequest, caller: Caller,
                      service: Service) -> CaseView:
    """Stop a case (submitters: their own): it ends escalated. A running case stops before its
    next planning turn, a paused one at once; a final case cannot be cancelled (409)."""
    return CaseView.of(await service.cancel(caller, case_id, body.reason))


@v1.get("/approvals", response_model=list[ApprovalRequest])
async def list_approvals(caller: Caller, service: Service,
                         status: ApprovalStatus | None = None) -> list[ApprovalRequest]:
    """Held actions, oldest first (`status=pending` for the queue)."""
    return await service.approvals(caller, status)


@v1.get("/approvals/{approval_id}", response_model=ApprovalContext, responses=_404)
async def get_approval(approval_id: str, caller: Caller, service: Service) -> ApprovalContext:
    """A held action with its case, the exception text, the planner's evidence and the dry-run diff."""
    return await service.approval(caller, approval_id)


@v1.post("/approvals/{approval_id}/approve", response_model=ApprovalRequest,
         responses={**_404, **_409})
async def approve(approval_id: str, body: ApprovalDecision, caller: Caller,
                  service: Service, credential: Cred) -> ApprovalRequest:
    """Approve the action shown with `args_digest`; the case resumes and runs it once. Refused
    (409) for the case's own submitter (separation of duties)."""
    return await service.decide(caller, approval_id, approve=True, args_digest=body.args_digest,
                                reason=body.reason, credential=credential)


@v1.post("/approvals/{approval_id}/reject", response_model=ApprovalRequest,
         responses={**_404, **_409})
async def reject(approval_id: str, body: RejectDecision, caller: Caller,
                 service: Service, credential: Cred) -> ApprovalRequest:
    """Reject the action shown with `args_digest`, with a reason; the planner is told it."""
    return await service.decide(caller, approval_id, approve=False, args_digest=body.args_digest,
                                reason=body.reason, credential=credential)


@v1.get("/autonomy", response_model=list[ClassStatus])
async def autonomy(caller: Caller, service: Service) -> list[ClassStatus]:
    """Each class's autonomy mode, the evidence of its stage (verdicts, Wilson interval), its gate,
    whether it is eligible for the next mode or due for demotion, and its last change."""
    return await service.autonomy(caller)


@v1.put("/autonomy/{exception_type}", response_model=ModeChange, responses={**_404, **_409})
async def set_mode(exception_type: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")],
                   body: ModeRequest, caller: Caller, service: Service, credential: Cred) -> ModeChange:
    """Set a class's autonomy mode (admin), recorded with who and why. A demotion is always
    allowed; a promotion goes one stage up and needs the class to be eligible under its gate
    (`GET /v1/autonomy`), else 409 naming the evidence, unless `override` is set: then the
    recorded reason says the gate was overridden. Skipping a stage is refused (409) either way."""
    return await service.set_mode(caller, exception_type, body.mode, body.reason, body.override,
                                  credential=credential)


@v1.get("/tokens", response_model=list[TokenInfo])
async def list_tokens(caller: Caller, service: Service) -> list[TokenInfo]:
    """Every API token (admin): whose, roles, created, expires, revoked, last used; never the token."""
    return await service.list_tokens(caller)


@v1.post("/tokens", status_code=201, response_model=IssuedToken)
async def create_token(body: TokenRequest, caller: Caller, service: Service) -> IssuedToken:
    """Create a token (admin); the answer is the only place the token is ever shown."""
    return await service.create_token(caller, body.name, body.roles, body.expires_s)


@v1.post("/tokens/{ref}/revoke", response_model=list[TokenInfo], responses=_404)
async def revoke_token(ref: Annotated[str, Path(max_length=128)], caller: Caller,
                       service: Service) -> list[TokenInfo]:
    """Revoke a token by its id, or every active token of a name (admin); its next request is 401."""
    return await service.revoke_token(caller, ref)


@v1.get("/policy", response_model=PolicyVersion)
async def policy_version(caller: Caller, service: Service) -> PolicyVersion:
    return PolicyVersion(version=await service.policy_version(caller))


@v1.put("/policy", response_model=PolicyVersion)
async def reload_policy(body: PolicyUpload, caller: Caller, service: Service,
                        credential: Cred) -> PolicyVersion:
    """Replace the policy without a restart (admin); every decision from now on uses it. The body
    is the policy's YAML text (no anchors or aliases); nothing is ever read from a path."""
    return PolicyVersion(version=await service.reload_policy(caller, body.yaml, credential=credential),
                         reloaded_by=caller.name)


@v1.get("/overview", response_model=Overview)
async def overview(caller: Caller, service: Service) -> Overview:
    """Automation rate, latency, open approvals and the unsupervised-high-risk count."""
    return await service.overview(caller)


@v1.get("/health", response_model=Health, responses={503: ERROR_RESPONSES[503]})
async def health(request: Request, service: Service, response: Response) -> Health:
    """Liveness and readiness (no token needed): the case manager answers. Rate limited per
    client address like any request; the case manager is asked at most once a second per replica."""
    client = request.client.host if request.client else "unknown"
    request.app.state.auth.limiter.hit(f"health from {client}")
    response.headers["Cache-Control"] = "no-store"
    return Health(status="ok", open_cases=await service.open_cases())
