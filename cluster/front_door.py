"""Builds the front door's ASGI app: the /v1 API and the /console pages over one `OpsService`.

It sits beside `api/` and `console/` (both of which it mounts), so neither imports the other's
side. Plain FastAPI, no Ray: the Serve deployment (cluster/serve_app.py) passes actor handles, tests
may pass in-process stand-ins with the same methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from opsagent.cluster.api.access_log import AccessLog, AccessLogMiddleware
from opsagent.cluster.api.auth import Authenticator
from opsagent.cluster.api.http_errors import install_error_handlers
from opsagent.cluster.api.request_limits import ApiLimits, BodySizeLimit, RateLimiter, SharedRateLimiter
from opsagent.cluster.api.routes import v1
from opsagent.cluster.api.service import OpsService
from opsagent.cluster.api.trace_reads import TraceReads
from opsagent.cluster.console.pages import console, error_page
from opsagent.policy.identity import TokenStore


def create_app(cases: Any, policy: Any, *, tokens_path: str | Path, traces_dir: str | Path,
               limits: ApiLimits | None = None, access_log: str | Path | None = None,
               rate_limit_path: str | Path | None = None, cookie_secure: bool | None = None) -> FastAPI:
    """The app over a case manager and a policy actor (handles with `.method.remote()`).
    `rate_limit_path`: the file every replica counts requests in (None: this replica's memory);
    `cookie_secure`: the console cookie's Secure flag (None: set when the request came by HTTPS)."""
    limits = limits or ApiLimits()
    app = FastAPI(
        title="opsagent", version="1",
        description="Submit logistics exceptions, follow their cases, decide held actions. "
        "Every /v1 route but health needs `Authorization: Bearer <token>`; the roles come "
        "from the token. The operations console is at /console.")
    tokens = TokenStore(tokens_path)
    app.state.service = OpsService(cases, policy, TraceReads(traces_dir), tokens)
    limiter = (SharedRateLimiter(rate_limit_path, limits.requests_per_window, limits.window_s)
               if rate_limit_path is not None else RateLimiter(limits.requests_per_window, limits.window_s))
    app.state.auth = Authenticator(tokens, limiter)
    app.state.cookie_secure = cookie_secure
    install_error_handlers(app, html=error_page)
    app.include_router(v1)
    app.include_router(console)
    app.add_middleware(BodySizeLimit, limit=limits.max_body_bytes,
                       overrides={"/v1/policy": limits.max_policy_bytes})
    app.add_middleware(AccessLogMiddleware, log=AccessLog(access_log))  # outermost: sees every answer
    return app
