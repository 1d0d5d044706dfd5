"""The ops front door as a Ray Serve application: the /v1 API and the /console pages
(cluster/api, cluster/console) in one FastAPI ingress deployment over the system's actors."""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from opsagent.cluster.api.request_limits import ApiLimits

from opsagent.cluster.front_door import create_app
from opsagent.cluster.runtime import NAMESPACE


class ApiArgs(BaseModel):
    """Arguments of `build_app`: the actors the API fronts, its files and limits."""

    model_config = {"extra": "forbid"}
    case_manager: str = Field(default="opsagent-cases", description="Named CaseManager actor.")
    policy: str = Field(default="opsagent-policy", description="Named PolicyActor.")
    tokens_path: str = Field(default="state/state.sqlite", description="The state database holding the API "
                             "tokens (hashed): a state URL, env:NAME, or an SQLite file path.")
    traces_dir: str = Field(default="traces", description="Trace store the timeline and overview read.")
    access_log: str | None = Field(
        default=None, description="File of access records (JSON lines); None: the Serve log only.")
    limits: ApiLimits = Field(default_factory=ApiLimits, description="Body size and rate limits.")
    rate_limit_path: str | None = Field(
        default=None, description="File (on a volume every replica shares) in which all replicas count "
        "requests, so the rate limit is one for the front door; None: each replica counts its own.")
    cookie_secure: bool | None = Field(
        default=None, description="The console cookie's Secure flag; None: set when served over HTTPS.")
    max_queued_requests: int = Field(
        default=200, ge=1, description="Requests Serve queues for a replica before answering 503.")


@serve.deployment(name="opsagent-api", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=64)
@serve.ingress()
class OpsAgentAPI:
    """Every /v1 route but health needs a bearer token; roles come from the token, never the body.

    `system` is an optional handle to the deployment that starts the actors (cluster/deploy.py):
    the app is built once it reports them, with the arguments it reports under `api` (its files,
    from the system config) below the ones given here; without it the actors are looked up by
    name."""

    def __init__(self, args: dict[str, Any], system: Any = None) -> None:
        self._given = dict(args)
        self._args = ApiArgs.model_validate(args)
        self._system = system

    async def __serve_build_asgi_app__(self) -> FastAPI:
        a = self._args
        if self._system is not None:
            actors = await self._system.actors.remote()
            cases, policy = actors["cases"], actors["policy"]
            a = ApiArgs.model_validate({**actors.get("api", {}), **self._given})
        else:
            cases = ray.get_actor(a.case_manager, namespace=NAMESPACE)
            policy = ray.get_actor(a.policy, namespace=NAMESPACE)
        return create_app(cases, policy, tokens_path=a.tokens_path, traces_dir=a.traces_dir,
                          limits=a.limits, access_log=a.access_log, rate_limit_path=a.rate_limit_path,
                          cookie_secure=a.cookie_secure)


def build_app(args: dict[str, Any] | ApiArgs | None = None, system: Any = None) -> Application:
    """Serve's application builder (`serve run opsagent.cluster.serve_app:build_app`)."""
    parsed = args if isinstance(args, ApiArgs) else ApiArgs.model_validate(args or {})
    deployment = OpsAgentAPI.options(max_queued_requests=parsed.max_queued_requests)
    return deployment.bind(parsed.model_dump(mode="json", exclude_unset=True), system)
