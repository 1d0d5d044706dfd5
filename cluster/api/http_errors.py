"""opsagent errors as HTTP answers: a status, `{"error": message, "detail": ...}`, and the headers
a client needs (WWW-Authenticate on 401, Retry-After on 429 and 503)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from starlette.exceptions import HTTPException

from opsagent.errors import (
    ApprovalError, AuthError, AutonomyError, CaseNotFound, CaseStateError, IdempotencyConflict, InputError,
    OpsAgentError, OverloadedError, RateLimited, StateUnavailable, TraceError,
)

UNAVAILABLE_RETRY_S = 5


class ErrorBody(BaseModel):
    """Every error answer: one readable line, plus structured detail where there is some."""

    error: str
    detail: object = None


def status_of(exc: OpsAgentError) -> int:
    if isinstance(exc, AuthError):
        return exc.status
    if isinstance(exc, CaseNotFound):
        return 404
    if isinstance(exc, ApprovalError):
        return 404 if str(exc).startswith("no approval") else 409
    if isinstance(exc, AutonomyError):
        return 404 if str(exc).startswith("unknown exception class") else 409
    if isinstance(exc, CaseStateError | IdempotencyConflict):
        return 409
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, OverloadedError | TraceError | StateUnavailable):
        return 503
    if isinstance(exc, InputError):
        return 404 if str(exc).startswith("no active token") else 422
    return 500


def error_response(exc: OpsAgentError) -> JSONResponse:
    status = status_of(exc)
    message = f"no case {exc}" if isinstance(exc, CaseNotFound) else str(exc)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif status == 503:
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_S)
    if status == 500:
        logging.getLogger(__name__).error("unexpected %s: %s", type(exc).__name__, exc)
        message = f"internal error ({type(exc).__name__})"
    return JSONResponse(status_code=status, content={"error": message, "detail": message},
                        headers=headers)


HtmlErrors = Callable[[Request, Response], Response]
"""Turns an error answer into a page, for requests under `html_prefix`."""


def install_error_handlers(app: FastAPI, *, html: HtmlErrors | None = None,
                           html_prefix: str = "/console") -> None:
    """Register the answers for opsagent errors, malformed requests and unreachable actors.
    Under `html_prefix` the JSON answer is handed to `html` to be shown as a page."""

    def answer(request: Request, response: Response) -> Response:
        if html is not None and request.url.path.startswith(html_prefix):
            return html(request, response)
        return response

    @app.exception_handler(OpsAgentError)
    async def _opsagent(request: Request, exc: OpsAgentError) -> Response:
        return answer(request, error_response(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """422 with one readable line per problem, plus FastAPI's structured detail."""
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return answer(request, JSONResponse(
            status_code=422,
            content={"error": "invalid request: " + "; ".join(problems),
                     "detail": [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]},
        ))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            message = f"the request body is not UTF-8: {exc.__cause__.reason} at byte {exc.__cause__.start}"
        return answer(request, JSONResponse(status_code=exc.status_code, headers=exc.headers,
                                            content={"error": message, "detail": message}))

    for unreachable in (RayActorError, ActorDiedError, ActorUnavailableError):
        @app.exception_handler(unreachable)
        async def _unavailable(request: Request, exc: Exception) -> Response:
            message = f"a system component is unavailable: {type(exc).__name__}"
            return answer(request, JSONResponse(
                status_code=503, headers={"Retry-After": str(UNAVAILABLE_RETRY_S)},
                content={"error": message, "detail": message}))


ERROR_RESPONSES = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "Malformed body (not UTF-8).", 401: "Missing or unknown token.", 403: "The token lacks the role.",
        413: "Body too large.", 422: "Invalid request.",
        429: "Rate limited; see Retry-After.", 503: "Overloaded or unavailable; see Retry-After.",
    }.items()
}
"""Answers every authenticated route can give (declared in the OpenAPI document)."""
