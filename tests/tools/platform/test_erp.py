"""The ERP over HTTP: invoices and their duplicate check, credits, refunds, voids, inventory."""

from tests.tools.platform.conftest import gold_args


def test_duplicate_check_names_the_copy_and_the_original(planted, call):
    inst = planted("duplicate_invoice", "void_open")
    copy = call("erp_get_invoice", {"invoice_id": inst.entities["invoice_id"]}).body
    original = call("erp_get_invoice", {"invoice_id": inst.facts["original"]}).body
    assert (copy["duplicate_check"], copy["duplicate_of"]) == ("duplicate", inst.facts["original"])
    assert (original["duplicate_check"], original["duplicate_of"]) == ("original", copy["invoice_id"])
    assert copy["status"] == "open" and copy["open_balance"] == copy["amount"]
    voided = call("erp_void_invoice", gold_args(inst, "erp_void_invoice"))
    assert voided.ok and voided.body["status"] == "void" and voided.body["duplicate_check"] == "none"
    assert call("erp_get_invoice", {"invoice_id": inst.facts["original"]}).body["duplicate_check"] == "none"
    again = call("erp_void_invoice", gold_args(inst, "erp_void_invoice"))
    assert again.status_code == 409 and "void" in again.error


def test_amounts_that_differ_are_not_a_duplicate(planted, call):
    inst = planted("duplicate_invoice", "amounts_differ")
    body = call("erp_get_invoice", {"invoice_id": inst.entities["invoice_id"]}).body
    assert body["duplicate_check"] == "amount_differs" and body["amount"] == inst.facts["copy_amount"]


def test_refund_only_on_paid_invoices_and_at_most_the_balance(planted, call):
    inst = planted("duplicate_invoice", "refund_paid")
    args = gold_args(inst, "erp_issue_refund")
    too_much = call("erp_issue_refund", {**args, "amount": args["amount"] + 1})
    assert too_much.status_code == 422 and "open balance" in too_much.error
    done = call("erp_issue_refund", args)
    assert done.status_code == 201 and done.body["refund_id"].startswith("RF-")
    invoice = call("erp_get_invoice", {"invoice_id": args["invoice_id"]}).body
    assert invoice["status"] == "refunded" and invoice["refunded_amount"] == args["amount"]
    assert invoice["open_balance"] == 0
    open_one = planted("duplicate_invoice", "void_open").entities["invoice_id"]
    refused = call("erp_issue_refund", {"invoice_id": open_one, "amount": 1.0, "reason": "x"})
    assert refused.status_code == 409 and "paid" in refused.error


def test_credit_notes_reduce_the_balance_and_block_a_void(planted, call):
    for _ in range(10):  # the variant's invoice is open or paid at random: take an open one
        inst = planted("damage_claim", "credit_small")
        args = gold_args(inst, "erp_issue_credit")
        if call("erp_get_invoice", {"invoice_id": args["invoice_id"]}).body["status"] == "open":
            break
    else:
        raise AssertionError("no open invoice in 10 planted damage claims")
    void = {"invoice_id": args["invoice_id"], "reason": "x"}
    assert call("erp_issue_credit", args).status_code == 201
    invoice = call("erp_get_invoice", {"invoice_id": args["invoice_id"]}).body
    assert invoice["status"] == "open" and invoice["credited_amount"] == args["amount"]
    assert invoice["open_balance"] == round(inst.facts["invoice_amount"] - args["amount"], 2)
    over = call("erp_issue_credit", {**args, "amount": invoice["open_balance"] + 0.01})
    assert over.status_code == 422
    refused = call("erp_void_invoice", void)  # open, but credited: no void
    assert refused.status_code == 409 and "credited" in refused.error
    assert call("erp_get_invoice", {"invoice_id": args["invoice_id"]}).body["status"] == "open"


def test_customer_and_commercial_invoice(planted, call):
    inst = planted("address_rejected", "correct_from_erp")
    customer = call("erp_get_customer", {"customer_id": inst.entities["customer_id"]}).body
    assert customer["address_status"] == "verified"
    assert {customer[k] for k in ("street", "postcode", "city")} == set(
        inst.facts["address_of_record"][k] for k in ("street", "postcode", "city"))
    found = planted("customs_documents_missing", "attach_invoice")
    invoice = call("erp_get_commercial_invoice", {"order_id": found.entities["order_id"]}).body
    assert invoice["kind"] == "commercial" and invoice["invoice_id"] == found.facts["commercial_invoice"]
    none = planted("customs_documents_missing", "no_commercial_invoice")
    assert call("erp_get_commercial_invoice", {"order_id": none.entities["order_id"]}).status_code == 404


def test_book_quantity_adjustment_posts_the_value_change(planted, call):
    inst = planted("stock_count_mismatch", "book_to_count")
    where = {"site": inst.entities["site"], "sku": inst.entities["sku"]}
    before = call("erp_get_inventory", where).body
    assert before["book_quantity"] == inst.facts["book_quantity"] != inst.facts["wms_quantity"]
    done = call("erp_adjust_book_quantity", gold_args(inst, "erp_adjust_book_quantity")).body
    moved = inst.facts["wms_quantity"] - before["book_quantity"]
    assert done["value_change"] == round(moved * before["unit_cost"], 2)
    after = call("erp_get_inventory", where).body
    assert after["book_quantity"] == inst.facts["wms_quantity"]
    same = call("erp_adjust_book_quantity", {**where, "book_quantity": after["book_quantity"], "reason": "x"})
    assert same.status_code == 409
    missing = planted("stock_count_mismatch", "not_on_books").entities
    assert call("erp_get_inventory", {"site": missing["site"], "sku": missing["sku"]}).status_code == 404
