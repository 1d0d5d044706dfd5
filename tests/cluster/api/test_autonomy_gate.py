"""PUT /v1/autonomy/{class} goes through the gates' rule (policy.gates.gate_mode_change): down
always, up one stage when eligible or with an explicit override (recorded), never two stages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.fakes.verdicts import trace_verdicts


@pytest.fixture(scope="module")
def door(registry, tmp_path_factory):
    """The front door over the real actor classes in this process; no case is run."""
    from opsagent.agents.engines import ScriptedEngine
    from tests.fakes.local_actors import local_front_door

    with local_front_door(registry, tmp_path_factory.mktemp("gate"), engine=ScriptedEngine([]),
                          playbooks={}) as running:
        yield running


def _client(door, role):
    return httpx.Client(base_url=door.url, timeout=30, headers=door.headers(role))


def _earn(traces, exception_type: str, mode: str, n: int) -> None:
    """`n` finished cases of the class decided in `mode`, each judged correct by a review."""
    start = datetime.now(UTC) + timedelta(seconds=1)  # after the class entered its mode
    trace_verdicts(traces, exception_type, mode, [True] * n, start, spacing=timedelta(seconds=1))


def _put(client, exception_type, **body):
    return client.put(f"/v1/autonomy/{exception_type}", json=body)


def _classes(client):
    return {c["exception_type"]: c for c in client.get("/v1/autonomy").json()}


def test_an_ineligible_promotion_is_refused_with_its_evidence(door):
    with _client(door, "admin") as admin:
        r = _put(admin, "damage_claim", mode="supervised", reason="looks good")
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert "gates do not allow supervised" in error and "needs 200 more" in error
        assert "0/0 correct" in error and "override" in error
        assert _classes(admin)["damage_claim"]["mode"] == "shadow"


def test_skipping_a_stage_is_refused_even_with_override(door):
    with _client(door, "admin") as admin:
        r = _put(admin, "address_rejected", mode="autonomous", reason="trust me", override=True)
        assert r.status_code == 409 and "would skip supervised" in r.json()["error"]
        assert _classes(admin)["address_rejected"]["mode"] == "shadow"


def test_an_eligible_class_moves_up_one_stage(door):
    _earn(door.traces, "weight_mismatch", "shadow", 200)
    with _client(door, "admin") as admin:
        assert _classes(admin)["weight_mismatch"]["eligible"]
        r = _put(admin, "weight_mismatch", mode="supervised", reason="200/200 agree with ops")
        assert r.status_code == 200, r.text
        assert (r.json()["from_mode"], r.json()["to_mode"], r.json()["reason"]) == (
            "shadow", "supervised", "200/200 agree with ops")
        # the next stage is earned afresh: supervised has no evidence yet
        again = _put(admin, "weight_mismatch", mode="autonomous", reason="keep going")
        assert again.status_code == 409 and "needs 200 more" in again.json()["error"]


def test_an_override_is_recorded_and_a_demotion_is_always_allowed(door):
    with _client(door, "auditor") as auditor:
        r = _put(auditor, "missed_pickup", mode="supervised", reason="x", override=True)
        assert r.status_code == 403
    with _client(door, "admin") as admin:
        assert _put(admin, "missed_pickup", mode="supervised", reason="x", override="yes").status_code == 422
        r = _put(admin, "missed_pickup", mode="supervised", reason="pilot agreed with ops lead", override=True)
        assert r.status_code == 200, r.text
        reason = r.json()["reason"]
        assert reason.startswith("pilot agreed with ops lead [override of the gate: needs 200 more")
        assert "evidence in shadow: 0/0 correct" in reason
        assert _classes(admin)["missed_pickup"]["last_change"]["reason"] == reason  # in the history
        down = _put(admin, "missed_pickup", mode="shadow", reason="incident 42")
        assert down.status_code == 200 and down.json()["to_mode"] == "shadow"
        assert _put(admin, "no_such_class", mode="shadow", reason="x").status_code == 404
