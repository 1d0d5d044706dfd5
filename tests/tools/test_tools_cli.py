"""`opsagent tools list` and `opsagent tools import openapi` as a user runs them."""

from __future__ import annotations

import re
import secrets

import pytest
import yaml

from opsagent.cli import main
from opsagent.tools.sources import load_sources
from tests.fakes.mcp_server import serve_http

POLICY = """
classes:
  parcel_hold:
    initial_mode: autonomous
    tools:
      get_parcel: {risk: low}
      hold_parcel: {risk: low}
      release_parcel: {risk: low}
      echo_read: {risk: low}
      echo_write_note:
        risk: low
        high_if: [{arg: text, one_of: [purge]}]
  audit:
    tools:
      echo_read: {risk: low}
      get_parcel: {risk: high, note: reviewed by hand}
      not_a_tool: {risk: low}
"""


def _rows(text: str) -> list[list[str]]:
    """A printed table's rows (after the header and its rule), split on runs of 2+ spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[2:] if line.strip()]


def test_list_shows_what_the_planner_sees_for_a_class(capsys):
    assert main(["tools", "list", "--class", "weight_mismatch"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert out.split()[:7] == ["class", "tool", "system", "source", "access", "risk", "dry_run"]
    assert ["weight_mismatch", "tms_adjust_billed_weight", "tms", "openapi", "write", "high", "yes"] in rows
    assert ["weight_mismatch", "wms_get_shipment", "wms", "openapi", "read", "low", "no"] in rows
    assert {r[0] for r in rows} == {"weight_mismatch"}


def test_list_mixes_openapi_and_mcp_sources(echo, tmp_path, monkeypatch, capsys):
    token = "pcl-" + secrets.token_hex(12)
    monkeypatch.setenv("PARCELS_TOKEN", token)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    echo_yaml = tmp_path / "echo.yaml"
    assert main(["tools", "import", "openapi", f"{echo.url}/openapi.json", "--name", "echo", "--base-url", echo.url,
                 "--auth-env", "ECHO_TOKEN", "--auth-scheme", "Bearer", "--out", str(echo_yaml)]) == 0
    capsys.readouterr()
    with serve_http(token) as url:
        mcp_yaml = tmp_path / "parcels.yaml"
        mcp_yaml.write_text(yaml.safe_dump({"kind": "mcp", "name": "parcels", "transport": "http", "url": url,
                                            "auth": [{"env": "PARCELS_TOKEN", "scheme": "Bearer"}]}))
        assert main(["tools", "list", "--no-sandbox", "--policy", str(policy), "--source", str(echo_yaml),
                     "--source", str(mcp_yaml)]) == 0
    out, err = capsys.readouterr()
    assert _rows(out) == [
        ["audit", "echo_read", "echo", "openapi", "read", "low", "no"],
        ["audit", "get_parcel", "parcels", "mcp", "read", "high", "no"],
        ["parcel_hold", "get_parcel", "parcels", "mcp", "read", "low", "no"],
        ["parcel_hold", "hold_parcel", "parcels", "mcp", "write", "low", "yes"],
        ["parcel_hold", "release_parcel", "parcels", "mcp", "write", "high (no dry run)", "no"],
        ["parcel_hold", "echo_read", "echo", "openapi", "read", "low", "no"],
        ["parcel_hold", "echo_write_note", "echo", "openapi", "write", "low; high if text in ['purge']", "yes"],
    ]
    assert "note: audit: tool 'not_a_tool' is not in the registry" in err
    assert token not in out + err


@pytest.mark.parametrize("argv,message,code", [  # 2: a usage error, 1: a runtime failure
    (["--class", "nope"], "unknown exception class 'nope'; the policy lists: address_rejected", 2),
    (["--policy", "/nonexistent/policy.yaml"], "cannot read policy file", 1),
    (["--no-sandbox", "--source", "/nonexistent/source.yaml"], "cannot read tool source file", 1),
])
def test_list_fails_clearly(capsys, argv, message, code):
    assert main(["tools", "list", *argv]) == code
    assert message in capsys.readouterr().err


def test_import_prints_the_config_without_out(echo, tmp_path, capsys):
    assert main(["tools", "import", "openapi", f"{echo.url}/openapi.json", "--name", "echo", "--base-url", echo.url,
                 "--auth-secret", "echo_token", "--retries", "0", "--write", "echo_read"]) == 0
    out, err = capsys.readouterr()
    assert "echo_read" in err and "echo_write_note" in err  # the summary goes to stderr
    path = tmp_path / "echo.yaml"
    path.write_text(out)
    (source,) = load_sources(path)
    assert source.retries == 0 and source.auth[0].secret == "echo_token" and source.auth[0].env is None
    assert source.operations["echo_read"].writes is True and echo.token not in out
