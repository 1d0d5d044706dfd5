"""The platform runs four systems of record; their tools come from their OpenAPI documents."""

import httpx

from opsagent.tools.platform.launcher import SYSTEMS

OPERATIONS = {
    "wms": {"wms_get_shipment", "wms_get_scale", "wms_request_rescan", "wms_cancel_rescan_request",
                  "wms_update_dispatch_status", "wms_get_order", "wms_get_stock", "wms_get_cycle_count",
                  "wms_request_cycle_count", "wms_cancel_cycle_count", "wms_adjust_stock"},
    "tms": {"tms_get_shipment", "tms_get_weight_dispute", "tms_open_weight_dispute",
                "tms_withdraw_weight_dispute", "tms_adjust_billed_weight", "tms_get_tracking",
                "tms_request_trace", "tms_cancel_trace", "tms_void_label", "tms_get_delivery_address",
                "tms_update_delivery_address",
                "tms_get_customs", "tms_attach_customs_document", "tms_get_pickup", "tms_reschedule_pickup"},
    "erp": {"erp_get_customer", "erp_get_invoice", "erp_get_commercial_invoice", "erp_issue_credit",
                "erp_issue_refund", "erp_void_invoice", "erp_get_inventory", "erp_adjust_book_quantity"},
    "tkt": {"tkt_get_ticket", "tkt_list_teams", "tkt_add_note", "tkt_assign_ticket",
                  "tkt_unassign_ticket", "tkt_resolve_ticket", "tkt_reopen_ticket"},
}


def test_four_systems_and_their_operations(platform, registry):
    assert set(platform.base_urls) == set(SYSTEMS) == set(OPERATIONS)
    for system, names in OPERATIONS.items():
        assert {s.name for s in registry if s.system == system} == names
        doc = httpx.get(f"{platform.base_urls[system]}/openapi.json").json()
        assert not any(p.startswith("/_admin") for p in doc["paths"])


def test_background_has_customers_and_invoices(platform):
    billing = platform.snapshot("erp")
    shipments = {s["shipment_id"] for s in platform.snapshot("wms")["shipments"]}
    background = [i for i in billing["invoices"] if i["invoice_id"].startswith("INV-1")]
    assert len(background) >= 10 and {i["shipment_id"] for i in background} <= shipments
    assert {i["customer_id"] for i in background} <= {c["customer_id"] for c in billing["customers"]}
    assert platform.digest("tkt")["counts"]["teams"] == 5
