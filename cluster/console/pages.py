"""The operations console: server-rendered pages at /console over the same `OpsService` as /v1.

Log in by pasting an API token: it is kept in an HttpOnly, SameSite=Strict cookie scoped to
/console (Secure when served over HTTPS, or as configured), and every form carries a CSRF value
derived from it. The login form, before any session, carries a random value that must match a
short-lived cookie set with the form (so another site cannot log a browser in as someone else);
logging out needs the session's CSRF value like any other form. The roles are the token's, as on
the API. Pages: overview, approval queue (approve / reject bound to the digest shown), cases
with filters, a case's steps and timeline, autonomy modes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from opsagent.agents.case import CaseStatus
from opsagent.cluster.api.auth import Authenticator
from opsagent.cluster.api.models import CaseSummary, CaseView
from opsagent.cluster.api.service import OpsService
from opsagent.cluster.case_query import CaseQuery
from opsagent.cluster.console.render import STATIC, render
from opsagent.errors import AuthError, InputError, OpsAgentError
from opsagent.policy.identity import Identity, Role
from opsagent.policy.modes import Mode

COOKIE = "opsagent_console"
LOGIN_COOKIE = "opsagent_login"  # the login form's CSRF value, before any session
MAX_FORM_BYTES = 16 * 1024

console = APIRouter(prefix="/console", include_in_schema=False)
ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}


def error_page(request: Request, answer: Response) -> Response:
    """An API error answer shown as a page: no valid session goes to the login form."""
    try:
        message = json.loads(answer.body).get("error") or "error"
    except (ValueError, AttributeError):
        message = "error"
    if answer.status_code == 401:
        return _back("/console/login", error=message)
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 413: "Too large",
              422: "Invalid request", 429: "Slow down", 503: "Unavailable"}
    page = render(request, "error.html", who=getattr(request.state, "identity", None),
                  csrf=csrf_value(request.cookies.get(COOKIE, "")), status=answer.status_code, title=titles.get(answer.status_code, "Error"),
                  message=message, status_code=answer.status_code)
    for header in ("Retry-After",):
        if header in answer.headers:
            page.headers[header] = answer.headers[header]
    return page


def csrf_value(token: str) -> str:
    """The value every console form must carry: derived from the session's token, so another
    site can neither read nor forge it."""
    return hashlib.sha256(b"opsagent-console-csrf:" + token.encode()).hexdigest()[:32]


def _who(request: Request) -> Identity:
    auth: Authenticator = request.app.state.auth
    return auth.authenticate(request, request.cookies.get(COOKIE))


def _service(request: Request) -> OpsService:
    return request.app.state.service


async def _form(request: Request) -> dict[str, str]:
    """The posted urlencoded form (one value per field); the CSRF value is checked."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InputError(f"form too large ({len(body)} bytes)")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    token = request.cookies.get(COOKIE) or ""
    if not token or not hmac.compare_digest(form.get("csrf", ""), csrf_value(token)):
        raise AuthError("the form's session check failed; reload the page", status=403)
    return form


def _back(path: str, **flash: str) -> RedirectResponse:
    query = urlencode({k: v[:300] for k, v in flash.items() if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _page(request: Request, who: Identity, template: str, **context: Any) -> HTMLResponse:
    return render(request, template, who=who, csrf=csrf_value(request.cookies.get(COOKIE, "")),
                  notice=request.query_params.get("notice"), error=request.query_params.get("error"),
                  **context)


@console.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                    headers={"Cache-Control": "max-age=300"})


@console.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", who=None, error=request.query_params.get("error"), csrf=nonce)
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/console",
                        max_age=900, secure=_secure(request))
    return response


@console.post("/login")
async def login(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _back("/console/login", error="form too large")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not hmac.compare_digest(form.get("csrf", ""), expected):
        return _back("/console/login", error="the login form expired or came from elsewhere; try again")
    token = form.get("token", "").strip()
    auth: Authenticator = request.app.state.auth
    try:
        who = auth.authenticate(request, token)
    except AuthError as exc:
        return _back("/console/login", error=str(exc))
    start = "/console/overview" if who.has(Role.approver, Role.auditor) else "/console/cases"
    response = RedirectResponse(start, status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/console",
                        max_age=8 * 3600, secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@console.post("/logout")
async def logout(request: Request) -> Response:
    await _form(request)  # the session's CSRF value: another site cannot log you out
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _secure(request: Request) -> bool:
    """The cookies' Secure flag: as configured, else whether the request came over HTTPS."""
    configured = getattr(request.app.state, "cookie_secure", None)
    return request.url.scheme == "https" if configured is None else configured


@console.get("", include_in_schema=False)
@console.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    who = _who(request)
    return RedirectResponse("/console/overview" if who.has(Role.approver, Role.auditor)
                            else "/console/cases", status_code=303)


@console.get("/overview", response_class=HTMLResponse)
async def overview_page(request: Request) -> HTMLResponse:
    who = _who(request)
    figures = await _service(request).overview(who)
    return _page(request, who, "overview.html", o=figures, section="overview", refresh=15)


@console.get("/approvals", response_class=HTMLResponse)
async def approvals_page(request: Request) -> HTMLResponse:
    who = _who(request)
    service = _service(request)
    queue = await service.pending_with_context(who)
    decided = [a for a in await service.approvals(who, None) if a.status != "pending"][-10:][::-1]
    return _page(request, who, "approvals.html", queue=queue, decided=decided, section="approvals",
                 can_decide=who.has(Role.approver), refresh=10)


@console.post("/approvals/{approval_id}/decide")
async def decide(request: Request, approval_id: str) -> Response:
    who = _who(request)
    form = await _form(request)
    verdict = form.get("decision")
    if verdict not in ("approve", "reject"):
        return _back("/console/approvals", error="choose approve or reject")
    try:
        done = await _service(request).decide(
            who, approval_id, approve=verdict == "approve", args_digest=form.get("args_digest", ""),
            reason=form.get("reason") or None, credential=request.state.credential)
    except AuthError:
        raise
    except OpsAgentError as exc:
        return _back("/console/approvals", error=f"{approval_id}: {exc}")
    return _back("/console/approvals",
                 notice=f"{approval_id} {done.status.value}; case {done.case_id} resumes")


@console.get("/cases", response_class=HTMLResponse)
async def cases_page(
    request: Request,
    status: Annotated[str, Query(max_length=32)] = "",
    exception_type: Annotated[str, Query(pattern=r"^([a-z][a-z0-9_]{0,63})?$")] = "",
    mode: Annotated[str, Query(max_length=32)] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """The filter form sends every field, empty ones meaning any."""
    who = _who(request)
    try:
        wanted_status = CaseStatus(status) if status else None
        wanted_mode = Mode(mode) if mode else None
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    query = CaseQuery(status=wanted_status, exception_types=[exception_type] if exception_type else None,
                      offset=offset, limit=50)
    service = _service(request)
    page = await service.cases_page(who, query, wanted_mode)
    filters = {"status": status, "exception_type": exception_type, "mode": mode}
    return _page(request, who, "cases.html", page=page, rows=[CaseSummary.of(e) for e in page.items],
                 filters=filters, statuses=[s.value for s in CaseStatus], section="cases",
                 classes=await service.classes(who), modes=[m.value for m in Mode], refresh=10,
                 more=urlencode({**{k: v for k, v in filters.items() if v},
                                 "offset": offset + len(page.items)}))


@console.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(request: Request, case_id: str) -> HTMLResponse:
    who = _who(request)
    service = _service(request)
    entry = await service.case(who, case_id)
    try:
        timeline, timeline_error = await service.timeline(who, case_id), None
    except OpsAgentError as exc:  # the trace store is unreachable: the case itself still shows
        timeline, timeline_error = [], str(exc)
    can_cancel = (not entry.case.status.final and who.has(Role.submitter)
                  and (Role.admin in who.roles or entry.submitted_by == who.name))
    return _page(request, who, "case.html", case=CaseView.of(entry), timeline=timeline,
                 timeline_error=timeline_error, can_cancel=can_cancel, section="cases",
                 refresh=0 if entry.case.status.final else 3)


@console.get("/autonomy", response_class=HTMLResponse)
async def autonomy_page(request: Request) -> HTMLResponse:
    who = _who(request)
    classes = await _service(request).autonomy(who)
    return _page(request, who, "autonomy.html", classes=classes, modes=[m.value for m in Mode],
                 can_set=Role.admin in who.roles, section="autonomy")


@console.post("/autonomy/{exception_type}")
async def set_mode(request: Request, exception_type: str) -> Response:
    who = _who(request)
    form = await _form(request)
    try:
        mode = Mode(form.get("mode", ""))
    except ValueError:
        return _back("/console/autonomy", error=f"unknown mode {form.get('mode')!r}")
    try:
        change = await _service(request).set_mode(who, exception_type, mode, form.get("reason", ""),
                                                  credential=request.state.credential)
    except AuthError:
        raise
    except OpsAgentError as exc:
        return _back("/console/autonomy", error=f"{exception_type}: {exc}")
    return _back("/console/autonomy", notice=f"{exception_type} is now {change.to_mode.value}")


@console.post("/cases/{case_id}/cancel")
async def cancel(request: Request, case_id: str) -> Response:
    who = _who(request)
    form = await _form(request)
    try:
        await _service(request).cancel(who, case_id, form.get("reason") or None)
    except AuthError:
        raise
    except OpsAgentError as exc:
        return _back(f"/console/cases/{case_id}", error=str(exc))
    return _back(f"/console/cases/{case_id}", notice="cancellation requested")
