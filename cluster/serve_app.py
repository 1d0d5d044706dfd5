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
from opsagent.errors import CaseNotFound, OverloadedError

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


@serve.deployment(name="opsagent-api", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpsAgentAPI:
    def __init__(self, case_manager: str) -> None:
        self._cases = ray.get_actor(case_manager, namespace=NAMESPACE)

    @api.post("/v1/exceptions", status_code=202, response_model=SubmitResponse)
    async def submit(self, report: ExceptionReport) -> Any:
        try:
            case: Case = await self._cases.submit.remote(report)
        except OverloadedError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, OverloadedError):
                raise HTTPException(503, str(exc.cause), headers={"Retry-After": "5"}) from exc
            raise
        return SubmitResponse(case_id=case.case_id, status=case.status.value,
                              links={"case": f"/v1/cases/{case.case_id}"})

    @api.get("/v1/cases/{case_id}", response_model=CaseView)
    async def get_case(self, case_id: str) -> Any:
        try:
            case: Case = await self._cases.get.remote(case_id)
        except (CaseNotFound, ray.exceptions.RayTaskError) as exc:
            cause = getattr(exc, "cause", exc)
            if isinstance(cause, CaseNotFound):
                raise HTTPException(404, f"no case {case_id!r}") from exc
            raise
        return CaseView.of(case)

    @api.get("/v1/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "open_cases": await self._cases.open_cases.remote()}


class ApiArgs(BaseModel):
    """Arguments of `build_app`: which case manager actor the API fronts."""

    case_manager: str = Field(default="opsagent-cases", description="Named CaseManager actor.")


def build_app(args: dict[str, Any] | ApiArgs | None = None) -> Application:
    """Serve's application builder (`serve run opsagent.cluster.serve_app:build_app`)."""
    parsed = args if isinstance(args, ApiArgs) else ApiArgs.model_validate(args or {})
    return OpsAgentAPI.bind(parsed.case_manager)
