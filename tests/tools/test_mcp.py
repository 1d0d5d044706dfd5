"""MCP servers as a tool source, against the real test server (tests/fakes/mcp_server.py) started
over stdio and over streamable HTTP: listing, read/write and dry-run detection, calls through the
policy, the executor and the case runner, auth, and failures."""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
from collections.abc import Iterator

import pytest

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy
from opsagent.agents.runner import CaseRunner
from opsagent.errors import ConfigError, SecretError, ToolCallError, ToolError
from opsagent.policy import PolicyConfig, PolicyEngine
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.identity import Identity, Role
from opsagent.policy.permits import issue_permit, new_permit_key
from opsagent.policy.records import args_digest
from opsagent.policy.service import PolicyService
from opsagent.tools.building import build_registry
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import AuthHeader, McpSource, McpToolOverride
from opsagent.tools.spec import argument_errors
from tests.fakes.mcp_server import SCRIPT as MCP_SERVER
from tests.fakes.mcp_server import serve_http
from tests.fakes.planners import RawPlanner

KEY = new_permit_key()
POLICY = """
classes:
  parcel_hold:
    initial_mode: autonomous
    tools:
      pcl_get_parcel: {risk: low}
      pcl_hold_parcel: {risk: low}
      pcl_release_parcel: {risk: low}
"""


@pytest.fixture(scope="module")
def token() -> Iterator[str]:
    """The server's token, planted as $PARCELS_TOKEN for this module's tests."""
    value = "pcl-" + secrets.token_hex(12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARCELS_TOKEN", value)
        yield value


@pytest.fixture(scope="module")
def stdio_registry(token) -> ToolRegistry:
    """Listed once per module (starting a stdio server takes seconds); calls start their own."""
    return build_registry([McpSource(name="parcels", transport="stdio", command=[sys.executable, MCP_SERVER],
                                     env_secrets={"PARCELS_TOKEN": {"env": "PARCELS_TOKEN"}}, prefix="pcl_")])


def _permit(tool, args, *, case_id="case-m", step=1):
    return issue_permit(tool=tool, args_digest=args_digest(tool, args), case_id=case_id, step=step,
                        policy_version="v", key=KEY, ttl_s=60)


def test_listed_tools_become_specs(stdio_registry):
    assert stdio_registry.names() == ["pcl_diagnose", "pcl_get_parcel", "pcl_hold_parcel", "pcl_release_parcel",
                                      "pcl_whoami"]
    get = stdio_registry.get("pcl_get_parcel")
    assert (get.source, get.system, get.method, get.path) == ("mcp", "parcels", "MCP", "get_parcel")
    assert not get.writes and not get.supports_dry_run and get.reversible is None
    assert get.description == "Look up a parcel and whether it is on hold."
    assert get.parameters == {"type": "object", "properties": {"parcel_id": {"type": "string"}},
                              "required": ["parcel_id"], "additionalProperties": False}
    assert argument_errors(get, {"parcel_id": 7}) and argument_errors(get, {"parcel_id": "P-1", "x": 1})
    hold = stdio_registry.get("pcl_hold_parcel")  # dry_run and idempotency_key: conventions, not arguments
    assert hold.writes and hold.supports_dry_run and hold.reversible is None and hold.idempotency == "argument"
    assert set(hold.parameters["properties"]) == {"parcel_id", "reason"} and hold.body_params == ["parcel_id", "reason"]
    release = stdio_registry.get("pcl_release_parcel")  # no annotations: a destructive write
    assert release.writes and not release.supports_dry_run and release.reversible is False
    assert release.idempotency is None  # no key argument, and the source does not vouch for _meta
    assert stdio_registry.source("parcels").kind == "mcp"
    with pytest.raises(ToolError, match="MCP server"):
        stdio_registry.base_url("parcels")


def test_calls_go_through_the_executor_with_permits_and_dry_runs(stdio_registry):
    executor = Executor(stdio_registry, KEY)
    hold_args = {"parcel_id": "P-1", "reason": "address check"}

    async def call(tool, args, **kw):
        return await executor.execute(tool, args, case_id="case-m", step=1, **kw)

    async def go():
        try:
            read = await call("pcl_get_parcel", {"parcel_id": "P-1"})
            assert read.ok and read.status_code is None and read.body["on_hold"] is False
            preview = await call("pcl_hold_parcel", hold_args, dry_run=True)
            assert preview.ok and preview.dry_run and preview.body["after"]["on_hold"] is True
            assert (await call("pcl_get_parcel", {"parcel_id": "P-1"})).body["on_hold"] is False
            refused = await call("pcl_hold_parcel", hold_args)
            assert not refused.ok and refused.error.startswith("refused: no permit")
            other = await call("pcl_hold_parcel", hold_args, permit=_permit("pcl_hold_parcel", {"parcel_id": "P-2"}))
            assert not other.ok and "other arguments" in other.error
            held = await call("pcl_hold_parcel", hold_args, permit=_permit("pcl_hold_parcel", hold_args))
            assert held.ok and held.body["dry_run"] is False
            assert (await call("pcl_get_parcel", {"parcel_id": "P-1"})).body["reason"] == "address check"
            missing = await call("pcl_get_parcel", {"parcel_id": "P-9"})
            assert not missing.ok and missing.error == "MCP tool error: Error executing tool get_parcel: unknown parcel P-9"
            with pytest.raises(ToolError, match="does not support dry runs"):
                await call("pcl_release_parcel", {"parcel_id": "P-1"}, dry_run=True)
            with pytest.raises(ToolError, match="unknown argument"):
                await call("pcl_get_parcel", {"parcel_id": "P-1", "dry_run": True})
        finally:
            await executor.close()

    asyncio.run(go())


def test_a_resent_mcp_write_applies_once(stdio_registry):
    """Hole 6: the actor-retry path re-sends a write with its permit, and case recovery re-sends
    it under a fresh permit for the same step; the server gets the idempotency key each time and
    applies the hold once. A write with no key is sent once and never again, whatever the permit."""
    executor = Executor(stdio_registry, KEY)
    args = {"parcel_id": "P-2", "reason": "customs"}

    async def go():
        try:
            permit = _permit("pcl_hold_parcel", args, case_id="case-r", step=2)
            first = await executor.execute("pcl_hold_parcel", args, case_id="case-r", step=2, permit=permit)
            again = await executor.execute("pcl_hold_parcel", args, case_id="case-r", step=2, permit=permit)
            fresh = _permit("pcl_hold_parcel", args, case_id="case-r", step=2)
            recovered = await executor.execute("pcl_hold_parcel", args, case_id="case-r", step=2, permit=fresh)
            assert first.ok and again.ok and recovered.ok
            assert first.body == again.body == recovered.body
            parcel = await executor.execute("pcl_get_parcel", {"parcel_id": "P-2"}, case_id="case-r", step=3)
            assert parcel.body["holds"] == 1
            release = {"parcel_id": "P-2"}
            once = _permit("pcl_release_parcel", release, case_id="case-r", step=4)
            ran = await executor.execute("pcl_release_parcel", release, case_id="case-r", step=4, permit=once)
            replay = await executor.execute("pcl_release_parcel", release, case_id="case-r", step=4, permit=once)
            other = await executor.execute("pcl_release_parcel", release, case_id="case-r", step=4,
                                           permit=_permit("pcl_release_parcel", release, case_id="case-r", step=4))
            assert ran.ok
            assert not replay.ok and "already used" in replay.error
            assert not other.ok and "no idempotency key" in other.error
        finally:
            await executor.close()

    asyncio.run(go())


class _Events:
    def __init__(self) -> None:
        self.events = []

    def export(self, events) -> None:
        self.events += events


def test_a_case_runs_mcp_tools_through_policy_and_executor(stdio_registry):
    """A write without a dry run is held for approval as high risk, then runs once approved."""
    engine = PolicyEngine(PolicyConfig.from_yaml(POLICY), stdio_registry, permit_key=KEY)
    service = PolicyService(engine, ApprovalStore(":memory:"))
    executor = Executor(stdio_registry, KEY)
    planner = RawPlanner([
        {"tool": "pcl_get_parcel", "args": {"parcel_id": "P-2"}},
        {"tool": "pcl_hold_parcel", "args": {"parcel_id": "P-2", "reason": "customs"}},
        {"tool": "pcl_release_parcel", "args": {"parcel_id": "P-2"}},
        {"tool": "finish", "status": "resolved", "reason": "released"},
    ])
    from opsagent.agents.local import LocalTracer

    events = _Events()
    runner = CaseRunner(planner, LocalPolicy(service), executor, LocalTracer(events), stdio_registry)
    case = Case(report=ExceptionReport(exception_type="parcel_hold", description="hold P-2",
                                      entities={"parcel_id": "P-2"}))

    async def go():
        try:
            await runner.run(case)
            assert case.status == CaseStatus.awaiting_approval, case.reason
            get, hold, release = case.steps
            assert (get.verdict, get.ok, hold.verdict, hold.risk, hold.ok) == ("allow", True, "allow", "low", True)
            assert (release.verdict, release.risk, release.executed) == ("require_approval", "high", False)
            assert "offers no dry run" in release.reasons[0]
            approval = service.get_approval(release.approval_id)
            assert approval.preview is None  # nothing to preview: the approver sees the arguments
            service.decide_approval(approval.approval_id, identity=Identity(name="alice", roles=frozenset({Role.approver})),
                                    approve=True, args_digest=approval.args_digest, reason="checked")
            await runner.resume(case)
        finally:
            await executor.close()

    asyncio.run(go())
    assert case.status == CaseStatus.resolved, case.reason
    release = case.steps[2]
    assert release.executed and release.ok and release.result["on_hold"] is False
    assert planner.steps == []


def test_streamable_http_with_bearer_auth(token):
    with serve_http(token) as url:
        source = McpSource(name="parcels", transport="http", url=url,
                           auth=[AuthHeader(env="PARCELS_TOKEN", scheme="Bearer")])
        registry = build_registry([source])
        assert "hold_parcel" in registry and registry.get("hold_parcel").supports_dry_run
        executor = Executor(registry, KEY)
        wrong = Executor(registry, KEY, secrets=Secrets(environ={"PARCELS_TOKEN": "not-the-token"}))

        async def go():
            try:
                who = await executor.execute("whoami", {}, case_id="c", step=1)
                assert who.ok and who.body == {"server": "parcels", "token": "[redacted]"}
                preview = await executor.execute("hold_parcel", {"parcel_id": "P-1", "reason": "r"}, case_id="c",
                                                 step=2, dry_run=True)
                assert preview.ok and preview.body["before"]["on_hold"] is False
                refused = await wrong.execute("get_parcel", {"parcel_id": "P-1"}, case_id="c", step=3)
                assert not refused.ok and refused.error.startswith("MCP call failed")
                assert refused.attempts == 2  # a read: retried once (retries: 1), then given up
            finally:
                await executor.close()
                await wrong.close()

        asyncio.run(go())
        with pytest.raises(ToolCallError, match="cannot list the tools of MCP server 'parcels'"):
            build_registry([source.model_copy(update={"auth": []})])


def test_overrides_exclusions_and_unknown_names(token):
    with serve_http(token) as url:
        source = McpSource(name="parcels", transport="http", url=url, prefix="p_",
                           auth=[AuthHeader(env="PARCELS_TOKEN", scheme="Bearer")],
                           tools={"get_parcel": McpToolOverride(writes=True), "whoami": McpToolOverride(exclude=True)})
        registry = build_registry([source])
        assert registry.get("p_get_parcel").writes and "p_whoami" not in registry and "p_diagnose" in registry
        with pytest.raises(ToolError, match="overrides name tools the server does not list: nope"):
            build_registry([source.model_copy(update={"tools": {"nope": McpToolOverride(exclude=True)}})])


def test_servers_that_cannot_be_reached_fail_clearly(stdio_registry, monkeypatch):
    dead = McpSource(name="parcels", transport="stdio", command=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(ToolCallError, match="cannot list the tools of MCP server 'parcels'"):
        build_registry([dead])
    broken = ToolRegistry(stdio_registry.specs(), sources=[dead])
    executor = Executor(broken, KEY)
    result = asyncio.run(executor.execute("pcl_get_parcel", {"parcel_id": "P-1"}, case_id="c", step=1))
    assert not result.ok and result.error.startswith("MCP call failed") and result.attempts == 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolCallError):
        build_registry([McpSource(name="x", transport="http", url=f"http://127.0.0.1:{port}/mcp")])
    monkeypatch.delenv("PARCELS_TOKEN")
    needs_token = Executor(stdio_registry, KEY)
    result = asyncio.run(needs_token.execute("pcl_get_parcel", {"parcel_id": "P-1"}, case_id="c", step=1))
    assert not result.ok and result.error == "cannot call pcl_get_parcel: environment variable PARCELS_TOKEN is not set"
    with pytest.raises(SecretError, match="PARCELS_TOKEN"):
        build_registry([stdio_registry.source("parcels")])


@pytest.mark.parametrize("fields,message", [
    ({"transport": "stdio"}, "needs command"),
    ({"transport": "http"}, "needs url"),
    ({"transport": "http", "url": "http://x/mcp", "command": ["x"]}, "are for stdio"),
    ({"transport": "stdio", "command": ["x"], "auth": [{"env": "T"}]}, "are for http"),
    ({"transport": "stdio", "command": ["x"], "prefix": "bad-"}, "prefix"),
])
def test_bad_mcp_source_configs_are_rejected(tmp_path, fields, message):
    import yaml

    from opsagent.tools.sources import load_sources

    path = tmp_path / "mcp.yaml"
    path.write_text(yaml.safe_dump({"kind": "mcp", "name": "parcels", **fields}))
    with pytest.raises(ConfigError, match=message):
        load_sources(path)


def test_tool_specs_from_listed_tools_without_a_server():
    from mcp.types import Tool, ToolAnnotations

    from opsagent.tools.mcp import tool_spec

    source = McpSource(name="docs", transport="http", url="http://docs.test/mcp", prefix="d_")
    nested = Tool(name="file", description="File a doc.", input_schema={
        "type": "object", "title": "fileArguments", "required": ["doc", "dry_run"],
        "properties": {"doc": {"$ref": "#/$defs/Doc"}, "dry_run": {"type": "boolean"}},
        "$defs": {"Doc": {"type": "object", "title": "Doc", "properties": {"title": {"type": "string"}}}}})
    spec = tool_spec(nested, source)
    assert spec.name == "d_file" and spec.writes and spec.supports_dry_run and spec.reversible is False
    assert spec.parameters == {"type": "object", "required": ["doc"], "additionalProperties": False,
                               "properties": {"doc": {"type": "object", "properties": {"title": {"type": "string"}}}}}
    not_a_flag = Tool(name="t", input_schema={"type": "object", "properties": {"dry_run": {"type": "string"}}})
    assert not tool_spec(not_a_flag, source).supports_dry_run  # only a boolean dry_run counts
    open_schema = Tool(name="o", input_schema={"type": "object", "additionalProperties": True},
                       annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    spec = tool_spec(open_schema, source)
    assert spec.parameters["additionalProperties"] is True and spec.writes and spec.reversible is None
    with pytest.raises(ToolError, match="input schema is not an object"):
        tool_spec(Tool(name="s", input_schema={"type": "string"}), source)
    with pytest.raises(ToolError, match="MCP tool 'r'"):
        tool_spec(Tool(name="r", input_schema={"type": "object", "properties": {"x": {"$ref": "#/$defs/Nope"}}}),
                  source)
