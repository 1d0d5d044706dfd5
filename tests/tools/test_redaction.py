"""Secrets never reach traces, prompts or logs.

End to end: two planted secrets (the echo service's bearer token, from the environment; the MCP
server's token, from the secrets file) are echoed back by real servers in result bodies, error
messages and the MCP server's stderr. A case runs in-process through the real planner (scripted
engine), policy, executor and trace writer; then every file under the trace folder is scanned
as bytes (the write-ahead log before publishing, the Parquet files after) and decoded, and the
prompts and logs are searched. A control run without redaction shows the scan finds a leak.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks import Playbook
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.errors import SecretError
from opsagent.policy import PolicyConfig, PolicyEngine
from opsagent.tools.building import build_registry
from opsagent.tools.redaction import MASK, Redactor
from opsagent.tools.secrets import SecretRef, Secrets
from opsagent.tools.sources import AuthHeader

POLICY = """
classes:
  credential_check:
    initial_mode: autonomous
    tools:
      echo_read: {risk: low}
      echo_fail: {risk: low}
      pcl_whoami: {risk: low}
      pcl_diagnose: {risk: low}
"""
PLAYBOOK = Playbook(exception_type="credential_check", goal="Check which credentials the systems see.")
STEPS = [
    {"evidence": {}, "tool": "echo_read", "args": {"word": "hello"}},
    {"evidence": {}, "tool": "echo_fail", "args": {}},
    {"evidence": {}, "tool": "pcl_whoami", "args": {}},
    {"evidence": {}, "tool": "pcl_diagnose", "args": {}},
    {"evidence": {}, "tool": "finish", "status": "escalated", "reason": "credentials checked"},
]


def test_the_redactor_replaces_every_encoding_everywhere() -> None:
    secret = 'tok/en+"s3cret"'
    redact = Redactor([secret, ""])
    value = {"a": f"Bearer {secret}", secret: [json.dumps({"t": secret}), "tok%2Fen%2B%22s3cret%22", 3, None],
             "t": ("tok%2Fen%2B%22s3cret%22", "plain")}
    assert redact(value) == {"a": f"Bearer {MASK}", MASK: ['{"t": "' + MASK + '"}', MASK, 3, None],
                             "t": (MASK, "plain")}
    assert redact.text("nothing here") == "nothing here"
    assert not Redactor([]) and Redactor([]).text(secret) == secret


def test_secrets_resolve_from_env_and_file_and_never_name_the_value(tmp_path) -> None:
    file = tmp_path / "secrets.json"
    file.write_text(json.dumps({"erp": "erp-secret-value", "short": "abc"}))
    found = Secrets(environ={"TOKEN": "env-secret-value", "OPSAGENT_SECRETS": str(file)})
    assert found.get(SecretRef(env="TOKEN")) == "env-secret-value"
    assert found.get(SecretRef(secret="erp")) == "erp-secret-value"
    assert AuthHeader(secret="erp", scheme="Bearer").value(found) == "Bearer erp-secret-value"
    with pytest.raises(SecretError, match="^secrets-file key 'nope' is not set$"):
        found.get(SecretRef(secret="nope"))
    with pytest.raises(SecretError, match="too short to redact") as short:
        found.get(SecretRef(secret="short"))
    assert "abc" not in str(short.value)
    assert found.known_values([SecretRef(env="TOKEN"), SecretRef(env="UNSET")]) == {
        "env-secret-value", "erp-secret-value"}  # "abc" can never be sent, and redacting it would mangle text
    with pytest.raises(SecretError, match="names no secrets file"):
        Secrets(environ={}).get(SecretRef(secret="erp"))
    file.write_text("[not, a, mapping]")
    with pytest.raises(SecretError, match="must be a mapping"):
        found.get(SecretRef(secret="erp"))
    with pytest.raises(SecretError, match="cannot read the secrets file"):
        Secrets(file=tmp_path / "missing.yaml").get(SecretRef(secret="erp"))
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(env="A", secret="b")


@pytest.fixture
def planted(echo, parcels_stdio, tmp_path, monkeypatch) -> dict:
    """Both secrets planted: the echo token in $ECHO_TOKEN, the parcels token in the secrets file."""
    parcels_token = "pcl-" + secrets.token_hex(12)
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text(yaml.safe_dump({"parcels_token": parcels_token}))
    monkeypatch.setenv("ECHO_TOKEN", echo.token)
    monkeypatch.setenv("OPSAGENT_SECRETS", str(secrets_file))
    source = parcels_stdio.model_copy(update={"env_secrets": {"PARCELS_TOKEN": SecretRef(secret="parcels_token")}})
    return {"echo": echo.token, "parcels": parcels_token, "mcp_source": source}


def _run_case(registry, root: Path, *, steps=STEPS, policy=POLICY,
              secrets_: Secrets | None = None) -> tuple[Case, ScriptedEngine, dict[str, bytes]]:
    """Run the credential-check case, traced under `root`; returns the case, the engine (its
    prompts) and every trace file's bytes before publishing (the write-ahead log)."""
    engine = ScriptedEngine(steps)
    decider = PolicyEngine(PolicyConfig.from_yaml(policy), registry)
    executor = Executor(registry, decider.verifier, secrets=secrets_)
    writer = TraceWriter(root)
    runner = CaseRunner(Planner(engine, {PLAYBOOK.exception_type: PLAYBOOK}, registry), LocalPolicy(decider),
                        executor, LocalTracer(writer), registry)
    case = Case(report=ExceptionReport(exception_type="credential_check", description="which credentials?",
                                       entities={"system": "echo"}))

    async def go() -> None:
        try:
            await runner.run(case)
        finally:
            await executor.close()

    try:
        asyncio.run(go())
        unpublished = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    finally:
        writer.close()
    engine.assert_done()
    return case, engine, unpublished


def _leaks(root: Path, unpublished: dict[str, bytes], values: list[str]) -> list[str]:
    """Where any of `values` occurs: the raw bytes of every file (log, then Parquet) and the
    decoded Parquet rows."""
    files = [p for p in root.rglob("*") if p.is_file()]
    blobs = [(f"before publishing: {name}", b) for name, b in unpublished.items()]
    blobs += [(str(p.relative_to(root)), p.read_bytes()) for p in files]
    blobs += [(f"decoded {p.relative_to(root)}", json.dumps(pq.read_table(p).to_pylist(), default=str).encode())
              for p in files if p.suffix == ".parquet"]
    return [where for where, blob in blobs for v in values if v.encode() in blob]


def _decoded(root: Path) -> str:
    return json.dumps([pq.read_table(p).to_pylist() for p in root.rglob("*.parquet")], default=str)


def test_planted_secrets_never_reach_traces_prompts_or_logs(planted, echo_source, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    registry = build_registry([echo_source, planted["mcp_source"]])
    root = tmp_path / "traces"
    case, engine, unpublished = _run_case(registry, root)

    assert case.status == CaseStatus.escalated, case.reason
    read, fail, whoami, diagnose = case.steps
    assert read.ok and read.result["seen_authorization"] == f"Bearer {MASK}"
    assert not fail.ok and fail.error == f"HTTP 400: credentials Bearer {MASK} are not allowed here"
    assert whoami.ok and whoami.result["token"] == MASK
    assert not diagnose.ok and diagnose.error.endswith(f"upstream refused token {MASK}")

    values = [planted["echo"], planted["parcels"]]
    assert any(name.startswith("_wal") and MASK.encode() in b for name, b in unpublished.items())
    assert _decoded(root).count(MASK) >= 4  # the echoes were traced, redacted
    assert _leaks(root, unpublished, values) == []
    prompts = json.dumps([[m.model_dump() for m in r.messages] for r in engine.requests])
    assert MASK in prompts and not any(v in prompts for v in values)
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "MCP server parcels: diagnose: upstream refused token [redacted]" in caplog.text  # forwarded stderr
    assert not any(v in logged for v in values)


def test_the_scan_finds_a_leak_when_nothing_is_redacted(planted, echo_source, tmp_path):
    """The control: with an executor that knows no secret values, the echoed token is in the traces."""

    class Forgetful(Secrets):
        def known_values(self, refs):
            return set()

    registry = build_registry([echo_source]).subset(["echo_read", "echo_fail"])
    policy = POLICY.replace("      pcl_whoami: {risk: low}\n      pcl_diagnose: {risk: low}\n", "")
    root = tmp_path / "traces"
    case, _, unpublished = _run_case(registry, root, steps=[STEPS[0], STEPS[1], STEPS[-1]], policy=policy,
                                     secrets_=Forgetful())
    assert case.status == CaseStatus.escalated, case.reason
    leaks = _leaks(root, unpublished, [planted["echo"]])
    assert any(w.startswith("before publishing: _wal") for w in leaks)
    assert any(w.endswith(".parquet") and not w.startswith("decoded") for w in leaks)


def _long_401(secret: str) -> httpx.MockTransport:
    """A system that answers 401 with a long detail echoing the bearer token it was sent, where a
    cut at 300 characters falls in the middle of the token."""

    def answer(request: httpx.Request) -> httpx.Response:
        detail = "x" * 262 + f" rejected {request.headers['authorization']} for this tenant; " + "y" * 200
        return httpx.Response(401, json={"detail": detail})

    return httpx.MockTransport(answer)


def test_a_secret_in_a_long_error_is_redacted_before_the_error_is_cut() -> None:
    """Hole 5: the error was cut to 300 characters first, and the cut token no longer matched:
    22 of its 40 characters reached the traces. Now no 8 consecutive characters of it remain."""
    from opsagent.tools.http import call_tool
    from opsagent.tools.redaction import MAX_ERROR_CHARS
    from opsagent.tools.spec import ToolSpec

    secret = secrets.token_hex(20)  # 40 characters
    spec = ToolSpec(name="erp_get", system="erp", method="GET", path="/x", description="x",
                    parameters={"type": "object", "properties": {}}, path_params=[], body_params=[],
                    writes=False, reversible=None, inverse=None, supports_dry_run=False)

    async def go():
        async with httpx.AsyncClient(transport=_long_401(secret)) as client:
            return await call_tool(client, spec, "http://erp.test", {},
                                   headers={"Authorization": f"Bearer {secret}"})

    result = Redactor([secret]).result(asyncio.run(go()))
    assert not result.ok and len(result.error) <= MAX_ERROR_CHARS
    assert not any(secret[i:i + 8] in result.error for i in range(len(secret) - 7)), result.error
    assert "rejected Bearer [redact" in result.error  # the cut falls in the mask, not in the token


@pytest.mark.parametrize("echo_of", [
    lambda s: repr(s),
    lambda s: json.dumps({"token": s}),
    lambda s: quote(s, safe=""),
    lambda s: quote_plus(s),
    lambda s: "Basic " + base64.b64encode(f"svc-user:{s}".encode()).decode(),
    lambda s: "auth=" + base64.urlsafe_b64encode(f"{s}".encode()).decode().rstrip("="),
    lambda s: f"creds {base64.b64encode(f'admin:{s}'.encode()).decode()}, retry later",
])
def test_every_encoding_of_a_secret_in_an_error_is_redacted(echo_of) -> None:
    secret = 'p@ss/w0rd+"quoted"\\' + secrets.token_hex(8)
    text = "upstream said: " + echo_of(secret) + " (end)"
    redacted = Redactor([secret]).text(text)
    assert MASK in redacted
    for form in (secret, repr(secret)[1:-1], quote(secret, safe=""), quote_plus(secret),
                 base64.b64encode(f"svc-user:{secret}".encode()).decode()):
        assert form not in redacted
    assert redacted.startswith("upstream said: ") and redacted.endswith(" (end)")
