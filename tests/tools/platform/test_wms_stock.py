"""The WMS's orders, dispatch status, stock, cycle counts and stock adjustments over HTTP."""

from tests.tools.platform.conftest import gold_args


def test_order_and_dispatch_status(planted, call):
    inst = planted("label_cancelled_order", "void_label")
    order = call("wms_get_order", {"order_id": inst.entities["order_id"]}).body
    assert order["status"] == "cancelled" and order["cancel_reason"]
    assert call("wms_get_order", {"order_id": "SO-0"}).status_code == 404

    sync = planted("tracking_out_of_sync", "record_delivery")
    sid = sync.entities["shipment_id"]
    assert call("wms_get_shipment", {"shipment_id": sid}).body["dispatch_status"] == "shipped"
    done = call("wms_update_dispatch_status", gold_args(sync, "wms_update_dispatch_status")).body
    assert done["dispatch_status"] == "delivered" and done["scale_check"] == "passed"
    again = call("wms_update_dispatch_status", gold_args(sync, "wms_update_dispatch_status"))
    assert again.status_code == 409

    packed = planted("tracking_out_of_sync", "never_left").entities["shipment_id"]
    refused = call("wms_update_dispatch_status", {"shipment_id": packed, "dispatch_status": "delivered",
                                                  "reason": "carrier says so"})
    assert refused.status_code == 409 and "still packed" in refused.error


def test_cycle_count_request_and_cancel_restore_the_count_status(planted, call):
    inst = planted("stock_count_mismatch", "book_to_count")
    where = {"location_id": inst.entities["location_id"], "sku": inst.entities["sku"]}
    stock = call("wms_get_stock", where).body
    assert stock["count_status"] == "counted" and stock["last_counted_quantity"] == stock["quantity"]
    assert stock["site"] == inst.entities["site"]
    count = call("wms_request_cycle_count", {**where, "reason": "double check"}).body
    assert count["status"] == "requested" and count["prior_count_status"] == "counted"
    assert call("wms_get_stock", where).body["count_status"] == "count_pending"
    assert call("wms_request_cycle_count", {**where, "reason": "again"}).status_code == 409
    assert call("wms_cancel_cycle_count", {"count_id": count["count_id"]}).body["status"] == "cancelled"
    assert call("wms_get_stock", where).body["count_status"] == "counted"
    assert call("wms_get_cycle_count", {"count_id": count["count_id"]}).body["cancelled_at"]


def test_stock_adjustment_moves_units_and_needs_a_recount(planted, call):
    inst = planted("stock_count_mismatch", "book_to_count")
    where = {"location_id": inst.entities["location_id"], "sku": inst.entities["sku"]}
    qty = call("wms_get_stock", where).body["quantity"]
    too_many = call("wms_adjust_stock", {**where, "quantity_delta": -(qty + 1), "reason": "x"})
    assert too_many.status_code == 422
    assert call("wms_adjust_stock", {**where, "quantity_delta": 0, "reason": "x"}).status_code == 422
    done = call("wms_adjust_stock", {**where, "quantity_delta": -3, "reason": "3 crushed"}).body
    assert (done["old_quantity"], done["new_quantity"]) == (qty, qty - 3)
    after = call("wms_get_stock", where).body
    assert after["quantity"] == qty - 3 and after["count_status"] == "uncounted"
    assert call("wms_get_stock", {**where, "sku": "SKU-0"}).status_code == 404
