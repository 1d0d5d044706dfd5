"""The ops front door: a Ray Serve application with a FastAPI ingress under /v1."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import ray
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.cluster.runtime import NAMESPACE
from opsagent.errors import ApprovalError, AuthError, CaseNotFound, ConfigError, OverloadedError
from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus
from opsagent.policy.config import PolicyConfig
from opsagent.policy.identity import Identity, Role, TokenStore, require

api = FastAPI(title="opsagent", version="1", description="Submit exceptions, follow cases.")


class SubmitResponse(BaseModel):
    case_id: str
    status: str
    links: dict[str, str]


class CaseView(BaseModel):
    """A case as the API shows it."""

    case_id: str
    exception_type: str
    status: str
    reason: str | None
    entities: dict[str, str]
    received_at: datetime
    finished_at: datetime | None
    policy_version: str | None
    steps: list[Step] = Field(default_factory=list)

    @classmethod
    def of(cls, case: Case) -> "CaseView":
        return cls(
            case_id=case.case_id, exception_type=case.report.exception_type,
            status=case.status.value, reason=case.reason, entities=case.report.entities,
            received_at=case.received_at, finished_at=case.finished_at,
            policy_version=case.policy_version, steps=case.steps,
        )


@api.exception_handler(RequestValidationError)
async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem, plus FastAPI's structured detail."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg')}")
    return JSONResponse(
        status_code=422,
        content={"error": "invalid request: " + "; ".join(problems),
                 "detail": [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]},
    )


class ApprovalDecision(BaseModel):
    """An approver's decision, bound to the action digest they were shown."""

    model_config = {"extra": "forbid"}
    args_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="Digest shown with the preview.")
    reason: str | None = Field(default=None, max_length=2000, description="Required to reject.")


class PolicyUpload(BaseModel):
    """A new policy file's text."""

    model_config = {"extra": "forbid"}
    yaml: str = Field(min_length=1, max_length=1_000_000, description="The policy YAML.")


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def _http_error(exc: BaseException) -> HTTPException:
    cause = _cause(exc)
    if isinstance(cause, AuthError):
        return HTTPException(cause.status, str(cause),
                             headers={"WWW-Authenticate": "Bearer"} if cause.status == 401 else None)
    if isinstance(cause, OverloadedError):
        return HTTPException(503, str(cause), headers={"Retry-After": "5"})
    if isinstance(cause, CaseNotFound):
        return HTTPException(404, f"no case {cause}")
    if isinstance(cause, ApprovalError):
        return HTTPException(404 if str(cause).startswith("no approval") else 409, str(cause))
    raise exc


@serve.deployment(name="opsagent-api", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpsAgentAPI:
    """Every /v1 route but health needs a bearer token; roles come from the token, never the body."""

    def __init__(self, case_manager: str, policy: str, tokens_path: str) -> None:
        self._cases = ray.get_actor(case_manager, namespace=NAMESPACE)
        self._policy = ray.get_actor(policy, namespace=NAMESPACE)
        self._tokens = TokenStore(tokens_path)

    def _identity(self, request: Request, *roles: Role) -> Identity:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        try:
            identity = self._tokens.authenticate(token)
            require(identity, *roles)
        except AuthError as exc:
            raise _http_error(exc) from exc
        return identity

    @api.post("/v1/exceptions", status_code=202, response_model=SubmitResponse)
    async def submit(self, report: ExceptionReport, request: Request) -> Any:
        self._identity(request, Role.submitter)
        try:
            case: Case = await self._cases.submit.remote(report)
        except Exception as exc:
            raise _http_error(exc) from exc
        return SubmitResponse(case_id=case.case_id, status=case.status.value,
                              links={"case": f"/v1/cases/{case.case_id}"})

    @api.get("/v1/cases/{case_id}", response_model=CaseView)
    async def get_case(self, case_id: str, request: Request) -> Any:
        self._identity(request, Role.submitter, Role.approver, Role.auditor)
        try:
            case: Case = await self._cases.get.remote(case_id)
        except Exception as exc:
            raise _http_error(exc) from exc
        return CaseView.of(case)

    @api.get("/v1/approvals", response_model=list[ApprovalRequest])
    async def list_approvals(self, request: Request, status: ApprovalStatus | None = None) -> Any:
        self._identity(request, Role.approver, Role.auditor)
        return await self._policy.list_approvals.remote(status.value if status else None)

    @api.post("/v1/approvals/{approval_id}/approve", response_model=ApprovalRequest)
    async def approve(self, approval_id: str, body: ApprovalDecision, request: Request) -> Any:
        return await self._decide(approval_id, body, request, approve=True)

    @api.post("/v1/approvals/{approval_id}/reject", response_model=ApprovalRequest)
    async def reject(self, approval_id: str, body: ApprovalDecision, request: Request) -> Any:
        return await self._decide(approval_id, body, request, approve=False)

    async def _decide(self, approval_id: str, body: ApprovalDecision, request: Request,
                      approve: bool) -> ApprovalRequest:
        identity = self._identity(request, Role.approver)
        try:
            decided: ApprovalRequest = await self._policy.decide_approval.remote(
                approval_id, identity, approve, body.args_digest, body.reason)
            await self._cases.resume.remote(decided.case_id)
        except Exception as exc:
            raise _http_error(exc) from exc
        return decided

    @api.get("/v1/policy")
    async def policy_version(self, request: Request) -> dict[str, str]:
        self._identity(request, Role.approver, Role.auditor)
        return {"version": await self._policy.version.remote()}

    @api.put("/v1/policy")
    async def reload_policy(self, body: PolicyUpload, request: Request) -> dict[str, str]:
        """Replace the policy without a restart; every decision from now on uses it."""
        identity = self._identity(request, Role.admin)
        try:
            config = PolicyConfig.from_yaml(body.yaml)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from exc
        version = await self._policy.reload.remote(config)
        return {"version": version, "reloaded_by": identity.name}

    @api.get("/v1/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "open_cases": await self._cases.open_cases.remote()}


class ApiArgs(BaseModel):
    """Arguments of `build_app`: the actors the API fronts and where API tokens are kept."""

    case_manager: str = Field(default="opsagent-cases", description="Named CaseManager actor.")
    policy: str = Field(default="opsagent-policy", description="Named PolicyActor.")
    tokens_path: str = Field(default="state/tokens.json", description="API token file (hashed).")


def build_app(args: dict[str, Any] | ApiArgs | None = None) -> Application:
    """Serve's application builder (`serve run opsagent.cluster.serve_app:build_app`)."""
    parsed = args if isinstance(args, ApiArgs) else ApiArgs.model_validate(args or {})
    return OpsAgentAPI.bind(parsed.case_manager, parsed.policy, parsed.tokens_path)
