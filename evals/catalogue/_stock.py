"""stock_count_mismatch: the WMS and the ERP's books show different quantities (WMS, ERP, ticketing).

Resolved, high risk: a completed cycle count backs the WMS quantity, so set the book quantity to
it (an inventory write-off or write-on: needs approval).
Resolved, low risk: the WMS quantity is not backed by a count: ask the floor to count first.
Escalated: the SKU is not on the ERP's books at that site at all (a missing record): finance.
"""

from __future__ import annotations

from datetime import timedelta

from opsagent.evals.catalogue._common import SITES, Draw, describe, read, ticket, ticketed_gold, write
from opsagent.evals.catalogue._model import ExceptionClass, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import AdminWrite

ITEMS = [("Thermal labels 100x150 (roll)", "ROLL", 0.9), ("Bluetooth scanner BT-20", "EA", 0.4),
         ("Stretch film 500mm", "ROLL", 2.6), ("Carton 40x30x20", "BOX", 0.3),
         ("Cable ties 300mm (100 pcs)", "BOX", 0.5), ("LED work light 20W", "EA", 1.1),
         ("Safety gloves size 9 (pair)", "EA", 0.1), ("Pallet wrap black", "ROLL", 2.2),
         ("USB-C charger 65W", "EA", 0.3), ("Espresso beans 1kg", "EA", 1.0),
         ("Tyre sealant 500ml", "EA", 0.6)]
_TEMPLATES = [
    "Stock mismatch {sku} at {site}: WMS shows {wms} {uom}, {erp}. {filler}",
    "Month-end recon: {sku} ({item}) differs between WMS ({wms}) and ERP valuation. Location {loc}. {filler}",
    "Inventory control: {sku} in {loc} - {erp}, system says {wms}. Which one is right? {filler}",
    "Please check {sku} at {site}, books and warehouse don't agree ({erp}). {filler}",
    "WMS vs ERP difference on {item} / {sku}. WMS {wms} in {loc}. {filler}",
]


def _build(d: Draw) -> Planted:
    rng, variant = d.rng, d.variant
    site, tid = rng.choice(SITES), d.ids.ticket()
    sku = d.ids.new("SKU", 6, lead=5)
    loc = f"{site}-{rng.choice('ABCDEF')}-{rng.randint(1, 40):02d}-{rng.randint(1, 5)}"
    item, uom, weight = rng.choice(ITEMS)
    qty = rng.randint(10, 400)
    books = max(0, qty + rng.choice([-1, 1]) * rng.randint(3, 40))
    books = books if books != qty else qty + 5
    cost = round(rng.uniform(1.2, 180), 2)
    counted = variant == "book_to_count" or (variant == "not_on_books" and rng.random() < 0.5)
    count_id = d.ids.new("CC", 8, lead=2)
    done = d.when - timedelta(days=rng.randint(1, 6))
    count = {"count_id": count_id, "location_id": loc, "sku": sku, "reason": "periodic cycle count",
             "priority": "normal", "status": "completed", "prior_count_status": "uncounted",
             "counted_quantity": qty if counted else qty + rng.choice([-7, -3, 4, 9]),
             "created_at": (done - timedelta(days=2)).isoformat(), "completed_at": done.isoformat()}
    had_count = counted or rng.random() < 0.5  # an older count, with stock moved since
    stock = {"location_id": loc, "sku": sku, "quantity": qty,
             "count_status": "counted" if counted else "uncounted",
             "last_count_id": count_id if had_count else None, "updated_at": d.time(1)}
    setup = [AdminWrite(system="wms", route="items", records=[
                 {"sku": sku, "description": item, "uom": uom, "unit_weight_kg": weight}]),
             AdminWrite(system="wms", route="locations", records=[
                 {"location_id": loc, "site": site, "zone": loc.split("-")[1], "kind": "bin"}]),
             AdminWrite(system="wms", route="stock", records=[stock])]
    if had_count:
        setup.append(AdminWrite(system="wms", route="cycle-counts", records=[count]))
    if variant != "not_on_books":
        setup.append(AdminWrite(system="erp", route="inventory", records=[
            {"site": site, "sku": sku, "description": item, "book_quantity": books, "unit_cost": cost,
             "currency": "EUR", "updated_at": d.time(20, -2)}]))
    erp = (rng.choice(["ERP has nothing for it", "ERP shows 0", "it's not in the valuation report"])
           if variant == "not_on_books" else f"ERP {books}")
    entities = {"sku": sku, "site": site, "location_id": loc, "ticket_id": tid}
    text = describe(rng, _TEMPLATES, sku=sku, site=site, wms=qty, uom=uom, erp=erp, item=item, loc=loc)
    setup.append(ticket(d, tid, text, entities))
    requested = {"system": "wms", "table": "cycle_counts", "where": {"sku": sku, "status": "requested"}}
    adjustments = {"system": "erp", "table": "inventory_adjustments", "where": {"sku": sku, "site": site}}
    books_at = {"system": "erp", "table": "inventory", "where": {"sku": sku, "site": site}}
    if variant == "book_to_count":
        outcome, reason = "resolved", f"Cycle count confirmed {qty}; set the books to the count."
        state = [StateAssertion(**books_at, count=1, values={"book_quantity": qty}),
                 StateAssertion(**adjustments, count=1, values={"old_quantity": books, "new_quantity": qty}),
                 StateAssertion(**requested, count=0)]
    elif variant == "recount":
        outcome, reason = "resolved", "WMS quantity is not backed by a count; requested a cycle count."
        state = [StateAssertion(**requested, count=1), StateAssertion(**books_at, count=1,
                                                                      values={"book_quantity": books}),
                 StateAssertion(**adjustments, count=0)]
    else:
        outcome, reason = "escalated", f"{sku} is not on the books at {site}; finance must add it."
        state = [StateAssertion(**requested, count=0), StateAssertion(**books_at, count=0)]
    if variant == "book_to_count":
        act = [write("erp_adjust_book_quantity",
                     {"site": site, "sku": sku, "book_quantity": qty, "reason": reason},
                     ["site", "sku", "book_quantity"], risk="high")]
    else:
        act = [write("wms_request_cycle_count", {"location_id": loc, "sku": sku, "reason": reason},
                     ["location_id", "sku"])]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="finance", reason=reason, assertions=state, act=act,
        reads=[read("wms_get_stock", location_id=loc, sku=sku),
               read("erp_get_inventory", ok=variant != "not_on_books", site=site, sku=sku)])
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"wms_quantity": qty, "book_quantity": books, "unit_cost": cost, "counted": counted,
                          "value_difference": round((qty - books) * cost, 2)})


STOCK_COUNT_MISMATCH = ExceptionClass(
    name="stock_count_mismatch",
    summary="WMS and ERP books disagree on a SKU; book to a confirmed count, else recount; missing on books: "
            "finance.",
    systems=("wms", "erp", "tkt"),
    variants={
        "book_to_count": Variant(0.4, "resolved", high_risk=True, note="counted: set the books (high risk)"),
        "recount": Variant(0.35, "resolved", note="not backed by a count: request a cycle count"),
        "not_on_books": Variant(0.25, "escalated", note="no ERP record for the SKU at the site"),
    },
    identifying=("sku", "ticket_id"),
    build=_build,
)
