import httpx


def _dispute_args(fresh) -> dict:
    return {"shipment_id": fresh.entities["shipment_id"],
            "claimed_weight_kg": fresh.facts["scanned_weight_kg"], "reason": "Warehouse scan is lower"}


def test_shipment_fields(call, fresh):
    body = call("tms_get_shipment", {"shipment_id": fresh.entities["shipment_id"]}).body
    assert set(body) == {"shipment_id", "carrier", "service_level", "tracking_number", "status",
                         "declared_weight_kg", "billed_weight_kg", "billed_amount", "currency",
                         "open_dispute_id"}
    assert body["currency"] == "EUR" and body["open_dispute_id"] is None
    assert body["billed_weight_kg"] == fresh.facts["billed_weight_kg"]


def test_open_then_withdraw_dispute(call, fresh):
    sid = fresh.entities["shipment_id"]
    opened = call("tms_open_weight_dispute", _dispute_args(fresh))
    assert opened.status_code == 201 and opened.body["status"] == "open"
    dispute_id = opened.body["dispute_id"]
    assert dispute_id.startswith("WD-")
    assert call("tms_get_shipment", {"shipment_id": sid}).body["open_dispute_id"] == dispute_id
    assert call("tms_open_weight_dispute", _dispute_args(fresh)).status_code == 409

    withdrawn = call("tms_withdraw_weight_dispute", {"dispute_id": dispute_id})
    assert withdrawn.ok and withdrawn.body["status"] == "withdrawn" and withdrawn.body["closed_at"]
    assert call("tms_get_shipment", {"shipment_id": sid}).body["open_dispute_id"] is None
    again = call("tms_withdraw_weight_dispute", {"dispute_id": dispute_id})
    assert again.status_code == 409 and "withdrawn" in again.error
    assert call("tms_get_weight_dispute", {"dispute_id": dispute_id}).body["status"] == "withdrawn"
    assert call("tms_withdraw_weight_dispute", {"dispute_id": "WD-999999"}).status_code == 404


def test_claim_must_be_below_billed_weight(call, fresh):
    args = {**_dispute_args(fresh), "claimed_weight_kg": fresh.facts["billed_weight_kg"] + 1}
    result = call("tms_open_weight_dispute", args)
    assert result.status_code == 422 and "below the billed weight" in result.error


def test_adjust_billed_weight_rerates_and_dry_run_shows_it(call, fresh, platform):
    sid = fresh.entities["shipment_id"]
    before = call("tms_get_shipment", {"shipment_id": sid}).body
    args = {"shipment_id": sid, "billed_weight_kg": fresh.facts["scanned_weight_kg"],
            "reason": "Carrier agreed"}
    preview = call("tms_adjust_billed_weight", args, dry_run=True)
    assert preview.body["diff"]["before"] == before
    assert preview.body["diff"]["after"]["billed_amount"] < before["billed_amount"]
    assert call("tms_get_shipment", {"shipment_id": sid}).body == before
    done = call("tms_adjust_billed_weight", args)
    assert done.ok and done.body == preview.body["diff"]["after"]
    adjustments = [a for a in platform.snapshot("tms")["billing_adjustments"] if a["shipment_id"] == sid]
    assert len(adjustments) == 1 and adjustments[0]["old_amount"] == before["billed_amount"]


def test_admin_routes_work_but_are_not_in_the_schema(platform):
    url = platform.base_urls["tms"]
    doc = httpx.get(f"{url}/openapi.json").json()
    assert not any(p.startswith("/_admin") for p in doc["paths"])
    assert httpx.post(f"{url}/_admin/shipments", json=[]).json() == {"upserted": 0}
    assert "shipments" in httpx.get(f"{url}/_admin/snapshot").json()
