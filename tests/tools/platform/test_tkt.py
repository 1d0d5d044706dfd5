"""Ticketing over HTTP: the queue's lifecycle, notes, hand-over to a human team."""

import httpx


def test_ticket_shows_what_ops_filed(planted, call):
    inst = planted("damage_claim", "credit_large")
    ticket = call("tkt_get_ticket", {"ticket_id": inst.entities["ticket_id"]}).body
    assert ticket["status"] == "open" and ticket["team"] is None and ticket["notes"] == []
    assert ticket["description"] == inst.description and ticket["exception_type"] == "damage_claim"
    assert ticket["claim_amount"] == inst.facts["claim"] and ticket["currency"] == "EUR"
    assert ticket["entities"] == {k: v for k, v in inst.entities.items() if k != "ticket_id"}


def test_assign_unassign_resolve_reopen(planted, call):
    tid = planted("missed_pickup", "reschedule").entities["ticket_id"]
    assigned = call("tkt_assign_ticket",
                    {"ticket_id": tid, "team": "carrier_relations", "note": "driver no-show"})
    assert assigned.body["status"] == "assigned" and assigned.body["team"] == "carrier_relations"
    assert "driver no-show" in assigned.body["notes"][-1]["body"]
    twice = call("tkt_assign_ticket", {"ticket_id": tid, "team": "carrier_relations", "note": "x"})
    assert twice.status_code == 409
    owned = call("tkt_resolve_ticket", {"ticket_id": tid, "resolution": "done"})
    assert owned.status_code == 409 and "carrier_relations" in owned.error  # a human team owns it
    assert call("tkt_unassign_ticket", {"ticket_id": tid}).body["status"] == "open"
    resolved = call("tkt_resolve_ticket", {"ticket_id": tid, "resolution": "rebooked for Thursday"}).body
    assert resolved["status"] == "resolved" and resolved["resolution"] == "rebooked for Thursday"
    assert resolved["resolved_at"] is not None
    assert call("tkt_resolve_ticket", {"ticket_id": tid, "resolution": "again"}).status_code == 409
    reopened = call("tkt_reopen_ticket", {"ticket_id": tid}).body
    assert reopened["status"] == "open" and reopened["resolution"] is None
    assert call("tkt_reopen_ticket", {"ticket_id": tid}).status_code == 409


def test_notes_teams_and_unknown_ids(planted, call):
    tid = planted("tracking_stuck", "request_trace").entities["ticket_id"]
    note = call("tkt_add_note", {"ticket_id": tid, "body": "carrier hotline: 30 min wait"})
    assert note.status_code == 201 and note.body["author"] == "opsagent"
    assert call("tkt_get_ticket", {"ticket_id": tid}).body["notes"][0]["note_id"] == note.body["note_id"]
    teams = {t["team_id"] for t in call("tkt_list_teams", {}).body}
    assert teams == {"finance", "customer_service", "warehouse_ops", "carrier_relations", "customs"}
    bad = call("tkt_assign_ticket", {"ticket_id": tid, "team": "payroll", "note": "x"})
    assert bad.status_code == 422
    assert call("tkt_get_ticket", {"ticket_id": "TKT-00000000"}).status_code == 404


def test_admin_routes_are_hidden(platform):
    url = platform.base_urls["tkt"]
    doc = httpx.get(f"{url}/openapi.json").json()
    assert not any(p.startswith("/_admin") for p in doc["paths"])
    assert httpx.post(f"{url}/_admin/tickets", json=[]).json() == {"upserted": 0}
    assert "tickets" in httpx.get(f"{url}/_admin/snapshot").json()
