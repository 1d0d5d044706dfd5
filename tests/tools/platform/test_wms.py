import httpx


def test_shipment_and_scale(call, fresh):
    body = call("wms_get_shipment", {"shipment_id": fresh.entities["shipment_id"]}).body
    for field in ("order_id", "customer_id", "scanned_weight_kg", "length_cm", "width_cm", "height_cm",
                  "scanned_at", "scale_id", "scale_check"):
        assert field in body
    assert body["scanned_weight_kg"] == fresh.facts["scanned_weight_kg"]
    scale = call("wms_get_scale", {"scale_id": body["scale_id"]}).body
    assert scale["last_check_result"] == body["scale_check"] == "passed"
    missing = call("wms_get_shipment", {"shipment_id": "SHP-000001"})
    assert missing.status_code == 404 and "SHP-000001" in missing.error


def test_rescan_request_lifecycle(call, fresh):
    sid = fresh.entities["shipment_id"]
    args = {"shipment_id": sid, "reason": "Carrier billed more than we scanned"}
    created = call("wms_request_rescan", args, idempotency_key=f"rescan-{sid}")
    assert created.status_code == 201 and created.body["priority"] == "normal"
    replay = call("wms_request_rescan", args, idempotency_key=f"rescan-{sid}")
    assert replay.body == created.body
    assert call("wms_request_rescan", args).status_code == 409  # one pending rescan per shipment
    cancelled = call("wms_cancel_rescan_request", {"request_id": created.body["request_id"]})
    assert cancelled.ok and cancelled.body["status"] == "cancelled"
    assert call("wms_request_rescan", {**args, "priority": "urgent"}).status_code == 201


def test_admin_rejects_a_shipment_on_an_unknown_scale(platform, fresh):
    record = httpx.get(f"{platform.base_urls['wms']}/_admin/snapshot").json()["shipments"][0]
    record["scale_id"] = "SCL-NOPE-01"
    response = httpx.post(f"{platform.base_urls['wms']}/_admin/shipments", json=[record])
    assert response.status_code == 422 and "FOREIGN KEY" in response.json()["detail"]
