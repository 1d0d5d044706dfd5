"""`opsagent tools import openapi` against real services: the sandbox's own systems of record and
the echo service. Imported sources carry auth (from the environment or the secrets file, attached
at call time), timeouts and retries; their tools are the same as the built-in conversion's."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import yaml

from opsagent.agents.executor import Executor
from opsagent.cli import main
from opsagent.errors import ConfigError, ToolCallError, ToolError
from opsagent.policy.permits import new_permit_key
from opsagent.tools.building import build_registry
from opsagent.tools.importer import import_openapi
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import AuthHeader, OpenAPISource, load_sources

KEY = new_permit_key()


def _execute(registry, tool, args, **kw):
    executor = Executor(registry, KEY, secrets=kw.pop("secrets", None))

    async def go():
        try:
            return await executor.execute(tool, args, case_id=kw.pop("case_id", "case-imp"), step=1, **kw)
        finally:
            await executor.close()

    return asyncio.run(go())


def test_the_cli_imports_a_live_sandbox_service_into_the_same_tools(platform, registry, fresh, tmp_path, capsys):
    url = platform.base_urls["tms"]
    out = tmp_path / "tms.yaml"
    assert main(["tools", "import", "openapi", f"{url}/openapi.json", "--name", "tms", "--base-url", url,
                 "--out", str(out), "--auth-env", "TMS_TOKEN", "--auth-scheme", "Bearer", "--timeout", "5"]) == 0
    printed = capsys.readouterr().out
    row = next(line.split() for line in printed.splitlines() if line.startswith("tms_open_weight_dispute "))
    assert row == ["tms_open_weight_dispute", "POST", "/shipments/{shipment_id}/weight-disputes", "write", "yes"]
    assert f"wrote {out} (15 tools of tms)" in printed
    config = yaml.safe_load(out.read_text())
    assert config["auth"] == [{"env": "TMS_TOKEN", "header": "Authorization", "scheme": "Bearer"}]
    assert (config["kind"], config["timeout_s"], config["retries"]) == ("openapi", 5.0, 2)
    assert config["document"]["paths"]  # embedded by default: the tools the policy was reviewed against
    assert "TMS_TOKEN" in out.read_text() and "secret" not in config

    (source,) = load_sources(out)
    imported = build_registry([source], secrets=Secrets(environ={"TMS_TOKEN": "tms-token-1234"}))
    built_in = [s for s in registry if s.system == "tms"]
    assert imported.specs() == built_in  # schemas, descriptions, read/write, dry run: all the same

    sid = fresh.entities["shipment_id"]
    env = Secrets(environ={"TMS_TOKEN": "tms-token-1234"})
    read = _execute(imported, "tms_get_shipment", {"shipment_id": sid}, secrets=env)
    assert read.ok and read.body["shipment_id"] == sid
    preview = _execute(imported, "tms_open_weight_dispute", {"shipment_id": sid, "claimed_weight_kg": 2.0,
                                                             "reason": "scan"}, dry_run=True, secrets=env)
    assert preview.ok and preview.dry_run and preview.body["diff"]


def test_a_file_spec_kept_by_location_with_overrides(platform, tmp_path, monkeypatch):
    url = platform.base_urls["wms"]
    spec = tmp_path / "wms.json"
    spec.write_text(json.dumps(__import__("httpx").get(f"{url}/openapi.json").json()))
    monkeypatch.chdir(tmp_path)
    imported = import_openapi("wms.json", "wms", url, embed=False, retries=0,
                              reads=["wms_request_rescan"], exclude=["wms_cancel_rescan_request"])
    assert imported.source.spec == str(spec) and imported.source.document is None
    tools = {t.name: t for t in imported.tools}
    assert "wms_cancel_rescan_request" not in tools and not tools["wms_request_rescan"].writes
    assert tools["wms_get_shipment"].description and not tools["wms_get_shipment"].writes

    out = tmp_path / "configs" / "wms.yaml"
    out.parent.mkdir()
    out.write_text(yaml.safe_dump({**imported.source.model_dump(exclude_none=True), "spec": "../wms.json"}))
    (source,) = load_sources(out)  # a relative spec is relative to the config file
    assert source.spec == str(spec)
    registry = build_registry([source])
    assert "wms_cancel_rescan_request" not in registry and not registry.get("wms_request_rescan").writes


def test_auth_comes_from_the_environment_at_call_time(echo_env, echo_source):
    registry = build_registry([echo_source])
    result = _execute(registry, "echo_read", {"word": "hi", "shout": True})
    assert result.ok and result.body == {"word": "HI", "seen_authorization": "Bearer [redacted]"}
    assert echo_env.state.authorization[-1] == f"Bearer {echo_env.token}"  # it was sent, then redacted


def test_auth_from_the_secrets_file(echo, echo_source, tmp_path, monkeypatch):
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text(yaml.safe_dump({"echo_token": echo.token}))
    monkeypatch.setenv("OPSAGENT_SECRETS", str(secrets_file))
    source = echo_source.model_copy(update={"auth": [AuthHeader(secret="echo_token", scheme="Bearer")]})
    result = _execute(build_registry([source]), "echo_read", {"word": "file"})
    assert result.ok and result.body["word"] == "file"


def test_a_missing_secret_fails_the_call_before_it_reaches_the_system(echo, echo_source, monkeypatch):
    monkeypatch.delenv("ECHO_TOKEN", raising=False)
    registry = build_registry([echo_source])
    before = echo.state.calls["echo_read"]
    result = _execute(registry, "echo_read", {"word": "x"})
    assert not result.ok and result.error == "cannot call echo_read: environment variable ECHO_TOKEN is not set"
    assert echo.state.calls["echo_read"] == before


def test_reads_are_retried_until_the_retries_run_out(echo_env, echo_source):
    registry = build_registry([echo_source])  # retries: 2
    recovered = _execute(registry, "echo_flaky", {"key": "r1", "failures": 2})
    assert recovered.ok and recovered.attempts == 3 and recovered.body["calls"] == 3
    exhausted = _execute(registry, "echo_flaky", {"key": "r2", "failures": 5})
    assert not exhausted.ok and exhausted.status_code == 503 and exhausted.attempts == 3
    none = build_registry([echo_source.model_copy(update={"retries": 0})])
    once = _execute(none, "echo_flaky", {"key": "r3", "failures": 1})
    assert not once.ok and once.attempts == 1


def test_writes_are_retried_only_with_an_idempotency_key(echo_env, echo_source):
    from opsagent.tools.http import call_tool

    registry = build_registry([echo_source])
    spec = registry.get("echo_write_note")
    headers = {"Authorization": f"Bearer {echo_env.token}"}

    async def call(key, idempotency_key):
        import httpx

        async with httpx.AsyncClient() as client:
            return await call_tool(client, spec, echo_env.url, {"key": key, "text": "t"}, headers=headers,
                                   idempotency_key=idempotency_key, retries=2, backoff_s=0.01)

    without = asyncio.run(call("w1", None))
    assert not without.ok and without.status_code == 503 and without.attempts == 1
    assert "w1" not in echo_env.state.notes
    keyed = asyncio.run(call("w2", "case-1:3"))
    assert keyed.ok and keyed.attempts == 2 and keyed.body["idempotency_key"] == "case-1:3"
    assert echo_env.state.notes["w2"] == "t"


def test_the_timeout_is_the_sources(echo_env, echo_source):
    slow = build_registry([echo_source.model_copy(update={"timeout_s": 0.2, "retries": 1})])
    result = _execute(slow, "echo_slow", {"seconds": 1})
    assert not result.ok and result.error == "timed out after 0.2s" and result.attempts == 2


@pytest.mark.parametrize("argv,message", [
    (["--read", "echo_nope"], "overrides name operations the document does not have: echo_nope"),
    (["--read", "echo_fail", "--write", "echo_fail"], "marked both read and write: echo_fail"),
    (["--auth-scheme", "Bearer"], "--auth-scheme needs --auth-env or --auth-secret"),
])
def test_the_cli_rejects_bad_imports_clearly(echo, capsys, argv, message):
    code = main(["tools", "import", "openapi", f"{echo.url}/openapi.json", "--name", "echo",
                 "--base-url", echo.url, *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_bad_documents_fail_clearly(tmp_path):
    with pytest.raises(ToolError, match="cannot read .*nope.json"):
        import_openapi(str(tmp_path / "nope.json"), "x", "http://127.0.0.1:1")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ToolError, match="does not hold a mapping"):
        import_openapi(str(listing), "x", "http://127.0.0.1:1")
    no_paths = tmp_path / "no_paths.yaml"
    no_paths.write_text("openapi: 3.1.0\ninfo: {title: x}\n")
    with pytest.raises(ToolError, match="not an OpenAPI document"):
        import_openapi(str(no_paths), "x", "http://127.0.0.1:1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolCallError, match=f"cannot fetch http://127.0.0.1:{port}/openapi.json"):
        import_openapi(f"http://127.0.0.1:{port}/openapi.json", "x", f"http://127.0.0.1:{port}")
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("openapi: 3.1.0\npaths: {/a: {get: {operationId: get_a}}}\n")
    assert [t.name for t in import_openapi(str(minimal), "x", "http://127.0.0.1:1").tools] == ["get_a"]
    with pytest.raises(ConfigError, match="name: String should match pattern"):
        import_openapi(str(minimal), "bad name!", "http://127.0.0.1:1")
    with pytest.raises(ToolError, match="no operation opsagent can call"):
        import_openapi(str(minimal), "x", "http://127.0.0.1:1", exclude=["get_a"])


@pytest.mark.parametrize("text,message", [
    ("kind: openapi\nname: x\nbase_url: ftp://x\n", "base_url"),
    ("kind: openapi\nname: x\nbase_url: http://x\nauth: [{env: A, secret: b}]\n", "exactly one of env"),
    ("kind: openapi\nname: x\nbase_url: http://x\nretries: -1\n", "retries"),
    ("kind: soap\nname: x\n", "kind"),
    ("kind: openapi\nname: x\nbase_url: http://x\nspec: a.json\ndocument: {paths: {}}\n", "not both"),
    ("", "no tool source"),
    ("kind: [\n", "not valid YAML"),
])
def test_bad_source_files_fail_clearly(tmp_path, text, message):
    path = tmp_path / "source.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sources(path)


def test_several_sources_in_one_file(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"kind": "openapi", "name": "a", "base_url": "http://a.test", "document": {"paths": {}}},
        {"kind": "mcp", "name": "b", "transport": "http", "url": "http://b.test/mcp"},
    ]}))
    a, b = load_sources(path)
    assert isinstance(a, OpenAPISource) and (b.kind, b.url) == ("mcp", "http://b.test/mcp")
