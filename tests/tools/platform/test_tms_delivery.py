"""The TMS's tracking, traces, labels, addresses, customs and pickups over HTTP."""

from tests.tools.platform.conftest import gold_args


def test_tracking_view(planted, call):
    inst = planted("damage_claim", "credit_small")
    tracking = call("tms_get_tracking", {"shipment_id": inst.entities["shipment_id"]}).body
    assert tracking["status"] == "delivered" and tracking["damage_reported"] == "yes"
    assert tracking["delivered_at"] and tracking["last_event_code"] == "DAMAGE_REPORTED"
    assert [e["code"] for e in tracking["events"]][0] == "PICKED_UP"
    clean = planted("damage_claim", "no_damage_record").entities["shipment_id"]
    assert call("tms_get_tracking", {"shipment_id": clean}).body["damage_reported"] == "no"


def test_trace_only_in_transit_and_once(planted, call):
    inst = planted("tracking_stuck", "request_trace")
    sid = inst.entities["shipment_id"]
    trace = call("tms_request_trace", gold_args(inst, "tms_request_trace")).body
    assert call("tms_get_tracking", {"shipment_id": sid}).body["open_trace_id"] == trace["trace_id"]
    assert call("tms_request_trace", {"shipment_id": sid, "reason": "again"}).status_code == 409
    assert call("tms_cancel_trace", {"trace_id": trace["trace_id"]}).body["status"] == "cancelled"
    assert call("tms_get_tracking", {"shipment_id": sid}).body["open_trace_id"] is None
    lost = planted("tracking_stuck", "declared_lost").entities["shipment_id"]
    refused = call("tms_request_trace", {"shipment_id": lost, "reason": "where is it"})
    assert refused.status_code == 409 and "lost" in refused.error


def test_label_void_only_before_pickup(planted, call):
    inst = planted("label_cancelled_order", "void_label")
    voided = call("tms_void_label", gold_args(inst, "tms_void_label")).body
    assert voided["refund_amount"] == inst.facts["label_cost"]
    tracking = call("tms_get_tracking", {"shipment_id": inst.entities["shipment_id"]}).body
    assert (tracking["status"], tracking["label_status"]) == ("label_voided", "voided")
    assert call("tms_void_label", gold_args(inst, "tms_void_label")).status_code == 409
    gone = planted("label_cancelled_order", "already_picked_up").entities["shipment_id"]
    assert call("tms_void_label", {"shipment_id": gone, "reason": "cancelled"}).status_code == 409


def test_address_correction_sends_the_parcel_again(planted, call):
    inst = planted("address_rejected", "correct_from_erp")
    sid = inst.entities["shipment_id"]
    before = call("tms_get_delivery_address", {"shipment_id": sid}).body
    assert before["validation"] == "rejected" and before["rejection_reason"] == inst.facts["why"]
    same = {k: before[k] for k in ("street", "postcode", "city", "country")}
    assert call("tms_update_delivery_address", {"shipment_id": sid, **same, "reason": "x"}).status_code == 409
    after = call("tms_update_delivery_address", gold_args(inst, "tms_update_delivery_address")).body
    assert after["validation"] == "valid" and after["postcode"] == inst.facts["address_of_record"]["postcode"]
    tracking = call("tms_get_tracking", {"shipment_id": sid}).body
    assert tracking["status"] == "in_transit" and tracking["last_event_code"] == "ADDRESS_CORRECTED"
    bad = call("tms_update_delivery_address",
               {"shipment_id": sid, **same, "country": "Germany", "reason": "x"})
    assert bad.status_code == 422


def test_customs_document_clears_the_missing_list(planted, call):
    inst = planted("customs_documents_missing", "attach_invoice")
    sid = inst.entities["shipment_id"]
    customs = call("tms_get_customs", {"shipment_id": sid}).body
    assert customs["customs_status"] == "held" and customs["missing_documents"] == ["commercial_invoice"]
    wrong = call("tms_attach_customs_document", {"shipment_id": sid, "document_type": "packing_list",
                                                 "reference": "PL-1"})
    assert wrong.status_code == 409 and "did not ask" in wrong.error
    done = call("tms_attach_customs_document", gold_args(inst, "tms_attach_customs_document")).body
    assert done["customs_status"] == "documents_submitted" and done["missing_documents"] == []
    assert done["documents"][0]["reference"] == inst.facts["commercial_invoice"]
    assert call("tms_get_customs", {"shipment_id": "SHP-00000001"}).status_code == 404


def test_pickup_reschedule_respects_the_next_slot(planted, call):
    inst = planted("missed_pickup", "reschedule")
    pid = inst.entities["pickup_id"]
    pickup = call("tms_get_pickup", {"pickup_id": pid}).body
    assert pickup["status"] == "missed" and pickup["next_available_date"] == inst.facts["next_available_date"]
    early = call("tms_reschedule_pickup",
                 {"pickup_id": pid, "pickup_date": pickup["scheduled_date"], "reason": "x"})
    assert early.status_code == 422 and "next available" in early.error
    done = call("tms_reschedule_pickup", gold_args(inst, "tms_reschedule_pickup")).body
    assert (done["status"], done["scheduled_date"], done["reschedules"]) == (
        "scheduled", inst.facts["next_available_date"], 1)
    collected = planted("missed_pickup", "carrier_says_collected").entities["pickup_id"]
    refused = call("tms_reschedule_pickup",
                   {"pickup_id": collected, "pickup_date": "2030-01-01", "reason": "x"})
    assert refused.status_code == 409 and "completed" in refused.error
