"""The command line against a running API (in process): approvals with --json and the
confirmation before approving, tokens and autonomy modes administered through the API."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest

from opsagent.cli import main


def _report(inst):
    return {"exception_type": inst.exception_type, "description": inst.description, "entities": inst.entities}


def _hold(door, inst) -> str:
    """Submit `inst` (a risky shipment) and return the approval id its case waits for."""
    with httpx.Client(base_url=door.url, headers=door.headers("submitter"), timeout=30) as client:
        cid = client.post("/v1/exceptions", json=_report(inst)).json()["case_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = client.get(f"/v1/cases/{cid}").json()
            if view["status"] == "awaiting_approval":
                return view["steps"][-1]["approval_id"]
            time.sleep(0.05)
    raise AssertionError(f"{cid} was not held: {view}")


@pytest.fixture(scope="module")
def held(front_door):
    """Three cases waiting for approval of a high-risk rebill: their approval ids."""
    headers = front_door.headers("submitter")
    with httpx.Client(base_url=front_door.url, headers=headers, timeout=30) as client:
        ids = [client.post("/v1/exceptions", json=_report(r)).json()["case_id"] for r in front_door.risky[:3]]
        deadline = time.monotonic() + 60
        views = {}
        while time.monotonic() < deadline and len(views) < len(ids):
            for cid in ids:
                view = client.get(f"/v1/cases/{cid}").json()
                if view["status"] == "awaiting_approval":
                    views[cid] = view
            time.sleep(0.05)
    assert len(views) == 3, views
    return [views[cid]["steps"][-1]["approval_id"] for cid in ids]


@pytest.fixture
def as_role(front_door, monkeypatch):
    def use(role: str) -> None:
        monkeypatch.setenv("OPSAGENT_URL", front_door.url)
        monkeypatch.setenv("OPSAGENT_TOKEN", front_door.tokens[role])
    return use


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(door, approval_id):
    with httpx.Client(base_url=door.url, headers=door.headers("approver")) as client:
        return client.get(f"/v1/approvals/{approval_id}").json()["approval"]["status"]


def test_approvals_list_and_show_print_json(front_door, held, as_role, capsys):
    as_role("approver")
    assert main(["approvals", "list", "--status", "all", "--json"]) == 0  # other tests decide some
    listed = json.loads(capsys.readouterr().out)
    assert set(held) <= {a["approval_id"] for a in listed}
    mine = _hold(front_door, front_door.risky[3])  # still pending whatever ran before
    assert main(["approvals", "show", mine, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["approval"]["tool"] == "tms_adjust_billed_weight" and shown["decidable"] is True
    assert main(["approvals", "show", mine]) == 0
    text = capsys.readouterr().out
    assert "action   tms_adjust_billed_weight (risk high" in text and "preview (the system's dry run)" in text
    assert main(["approvals", "show", "apr-nope"]) == 1  # a runtime failure: unknown approval
    assert "404" in capsys.readouterr().err


def test_approve_asks_first_and_refuses_without_a_terminal(front_door, held, as_role, capsys, monkeypatch):
    as_role("approver")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped: not a terminal
    assert main(["approvals", "approve", held[0]]) == 2
    err = capsys.readouterr()
    assert "not a terminal, so nothing was approved" in err.err and "tms_adjust_billed_weight" in err.out
    assert _status(front_door, held[0]) == "pending"
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["approvals", "approve", held[0]]) == 2
    assert "not approved" in capsys.readouterr().err and _status(front_door, held[0]) == "pending"
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert main(["approvals", "approve", held[0]]) == 0
    assert "approved by approver" in capsys.readouterr().out
    assert _status(front_door, held[0]) == "approved"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal, but told what to approve
    assert main(["approvals", "approve", held[1], "--yes"]) == 0
    capsys.readouterr()
    digest = json.loads(_json(["approvals", "show", held[2], "--json"], capsys))["approval"]["args_digest"]
    assert main(["approvals", "approve", held[2], "--digest", "0" * 64]) == 1  # not what is held now
    assert "changed since you reviewed it" in capsys.readouterr().err
    assert main(["approvals", "approve", held[2], "--digest", digest]) == 0
    assert _status(front_door, held[1]) == "approved" and _status(front_door, held[2]) == "approved"


def _json(argv, capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_tokens_through_the_api_and_a_revoked_token_is_401_and_logged(front_door, as_role, capsys):
    as_role("admin")
    assert main(["tokens", "add", "dora", "--role", "auditor", "--expires", "30d"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("oat_") and "dora (auditor)" in out.err
    with httpx.Client(base_url=front_door.url, headers={"Authorization": f"Bearer {token}"}) as dora:
        assert dora.get("/v1/cases").status_code == 200
        listed = {t["name"]: t for t in json.loads(_json(["tokens", "list", "--json"], capsys))}
        assert listed["dora"]["last_used_at"] and listed["dora"]["expires_at"] > listed["dora"]["created_at"]
        assert main(["tokens", "revoke", listed["dora"]["token_id"]]) == 0
        assert "revoked" in capsys.readouterr().out
        refused = dora.get("/v1/cases")
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    log = [json.loads(line) for line in (front_door.state / "access.jsonl").read_text().splitlines()]
    assert log[-1]["status"] == 401 and log[-1]["refused_token"].startswith("dora (tok-")
    assert main(["tokens", "revoke", "nobody"]) == 1 and "404" in capsys.readouterr().err
    as_role("approver")
    assert main(["tokens", "list"]) == 1 and "lacks the admin role" in capsys.readouterr().err


def test_autonomy_set_through_the_api(front_door, as_role, capsys):
    as_role("admin")
    assert main(["autonomy", "set", "weight_mismatch", "supervised", "--reason", "incident 7"]) == 0
    assert "weight_mismatch: autonomous -> supervised by admin" in capsys.readouterr().out
    assert main(["autonomy", "set", "weight_mismatch", "autonomous", "--reason", "back"]) == 1  # not eligible
    assert "409" in capsys.readouterr().err
    assert main(["autonomy", "set", "weight_mismatch", "autonomous", "--reason", "back", "--override"]) == 0
    capsys.readouterr()
    policy = front_door.actors["policy"].instance
    assert {m.exception_type: m.mode.value for m in policy.autonomy_status()}["weight_mismatch"] == "autonomous"
