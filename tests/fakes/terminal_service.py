"""A client's system of record for the 11th class, `demurrage_charge`: a container terminal's
billing service (FastAPI, so it publishes its own OpenAPI document), and the client's history
of cases with what its ops team did on each.

This is NOT opsagent code: it stands in for the client's own service in the docs' how-to
(docs/new-exception-class.md) and its test. opsagent reaches it only through the OpenAPI
document (`examples/demurrage_charge/terminal.openapi.json`, exported from `create_app`) and
the configuration beside it.

A demurrage charge: the terminal bills storage days past the free time. Its billing audit
recomputes the chargeable days from the gate-in/gate-out scans. Three kinds of cases:
- `overbilled` (resolved): the audit finds fewer chargeable days: dispute, claiming them;
- `confirmed` (resolved): the audit confirms the days: approve the charge for payment;
- `customs_hold` (escalated): the container sat under a customs hold: the broker's charge, so
  refer it to customs_brokerage.
"""

from __future__ import annotations

import random
import threading
from datetime import date, timedelta
from typing import Annotated, Literal

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from opsagent.evals.catalogue import Gold, GoldAction, HumanAction, HumanLog, Instance, StateAssertion

CLASS = "demurrage_charge"
VARIANTS = {"overbilled": 0.4, "confirmed": 0.4, "customs_hold": 0.2}
HIGH_RISK_ABOVE = 1000.0  # approving more than this needs a human (the example policy's high_if)

ChargeId = Annotated[str, PathParam(description="Demurrage charge id, e.g. DEM-4711023.")]
DryRun = Annotated[bool, Query(description="Validate and return the result without changing anything.")]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                       description="Replaying a key returns the stored response.")]


class Charge(BaseModel):
    charge_id: str
    container_id: str = Field(description="ISO 6346 container number.")
    terminal: str
    amount: float = Field(description="Billed amount.")
    currency: str
    billed_days: int = Field(description="Storage days billed past the free time.")
    hold: Literal["none", "customs"] = Field(description="Hold on the container while it was stored.")
    status: Literal["billed", "disputed", "approved", "referred"]
    gate_in: str
    gate_out: str
    free_days: int


class Audit(BaseModel):
    charge_id: str
    billed_days: int
    chargeable_days: int = Field(description="Days past the free time by the gate scans.")
    finding: Literal["overbilled", "confirmed"]


class DisputeBody(BaseModel):
    claimed_days: int = Field(ge=0, description="The chargeable days the dispute claims.")
    reason: str = Field(min_length=1, max_length=500, description="Why, kept on file.")


class ApproveBody(BaseModel):
    amount: float = Field(gt=0, description="The amount approved for payment (must be the billed one).")
    note: str = Field(min_length=1, max_length=500, description="Kept on file.")


class ReferBody(BaseModel):
    team: Literal["customs_brokerage", "finance", "terminal_ops"] = Field(description="Who takes it over.")
    note: str = Field(min_length=1, max_length=500, description="Kept on file.")


class ChargeUpdate(BaseModel):
    charge_id: str
    status: str
    dry_run: bool = False
    claimed_days: int | None = None
    amount: float | None = None
    team: str | None = None


def create_app() -> FastAPI:
    """The terminal billing service, its data in memory (admin routes are not in the document)."""
    app = FastAPI(title="Terminal billing", version="1.0.0",
                  description="Demurrage charges of a container terminal, with the billing audit.")
    charges: dict[str, Charge] = {}
    replies: dict[str, ChargeUpdate] = {}
    lock = threading.Lock()

    def get(charge_id: str) -> Charge:
        if charge_id not in charges:
            raise HTTPException(404, f"no charge {charge_id}")
        return charges[charge_id]

    def change(charge_id: str, key: str | None, dry_run: bool, status: str, **fields) -> ChargeUpdate:
        with lock:
            if key and not dry_run and key in replies:
                return replies[key]
            charge = get(charge_id)
            if charge.status != "billed":
                raise HTTPException(409, f"{charge_id} is {charge.status}, not billed")
            reply = ChargeUpdate(charge_id=charge_id, status=status, dry_run=dry_run, **fields)
            if not dry_run:
                charges[charge_id] = charge.model_copy(update={"status": status})
                if key:
                    replies[key] = reply
            return reply

    @app.get("/charges/{charge_id}", operation_id="terminal_get_charge", response_model=Charge,
             summary="Read a demurrage charge: container, amount, billed days, hold, status.")
    def get_charge(charge_id: ChargeId) -> Charge:
        return get(charge_id)

    @app.get("/charges/{charge_id}/audit", operation_id="terminal_audit_charge", response_model=Audit,
             summary="The billing audit of a charge: chargeable days by the gate scans, and the finding.")
    def audit(charge_id: ChargeId) -> Audit:
        c = get(charge_id)
        stored = (date.fromisoformat(c.gate_out) - date.fromisoformat(c.gate_in)).days
        chargeable = max(0, stored - c.free_days)
        return Audit(charge_id=charge_id, billed_days=c.billed_days, chargeable_days=chargeable,
                     finding="overbilled" if c.billed_days > chargeable else "confirmed")

    @app.post("/charges/{charge_id}/dispute", operation_id="terminal_dispute_charge",
              response_model=ChargeUpdate, summary="Dispute a billed charge, claiming the chargeable days.")
    def dispute(charge_id: ChargeId, body: DisputeBody, dry_run: DryRun = False,
                key: IdemKey = None) -> ChargeUpdate:
        return change(charge_id, key, dry_run, "disputed", claimed_days=body.claimed_days)

    @app.post("/charges/{charge_id}/approve", operation_id="terminal_approve_charge",
              response_model=ChargeUpdate, summary="Approve a billed charge for payment.")
    def approve(charge_id: ChargeId, body: ApproveBody, dry_run: DryRun = False,
                key: IdemKey = None) -> ChargeUpdate:
        if abs(body.amount - get(charge_id).amount) > 0.005:
            raise HTTPException(422, "the amount approved must be the billed amount")
        return change(charge_id, key, dry_run, "approved", amount=body.amount)

    @app.post("/charges/{charge_id}/refer", operation_id="terminal_refer_charge",
              response_model=ChargeUpdate, summary="Refer a charge to a team that settles it.")
    def refer(charge_id: ChargeId, body: ReferBody, dry_run: DryRun = False,
              key: IdemKey = None) -> ChargeUpdate:
        return change(charge_id, key, dry_run, "referred", team=body.team)

    @app.post("/admin/charges", include_in_schema=False)
    def load(rows: list[Charge]) -> dict:
        with lock:
            charges.update({r.charge_id: r for r in rows})
        return {"loaded": len(rows)}

    @app.get("/admin/charges", include_in_schema=False)
    def dump() -> list[Charge]:
        return list(charges.values())

    return app


def make_cases(seed: int, count: int, *, ops_error_share: float = 0.03) -> tuple[list[Instance], list[Charge]]:
    """`count` seeded cases (exact variant shares, shuffled) with the charges to load, the gold
    and what ops did; on `ops_error_share` of them ops themselves got it wrong (approved an
    overbilled charge, or disputed a confirmed one), as a real action log has."""
    rng = random.Random(f"{CLASS}:{seed}")
    kinds = [k for k, share in VARIANTS.items() for _ in range(round(count * share))]
    kinds = (kinds + ["overbilled"] * count)[:count]
    rng.shuffle(kinds)
    cases, charges = [], []
    for index, kind in enumerate(kinds):
        charge, inst = _case(rng, seed, index, kind, rng.random() < ops_error_share)
        cases.append(inst)
        charges.append(charge)
    return cases, charges


def _case(rng: random.Random, seed: int, index: int, kind: str, ops_err: bool) -> tuple[Charge, Instance]:
    cid = f"DEM-{rng.randint(4_000_000, 4_999_999)}-{index:04d}"
    container = f"{rng.choice(['MSCU', 'MAEU', 'HLXU', 'CMAU'])}{rng.randint(1_000_000, 9_999_999)}"
    gate_in = date(2025, 9, 1) + timedelta(days=rng.randint(0, 60))
    free, stored = rng.choice([3, 4, 5]), rng.randint(7, 20)
    chargeable = stored - free
    billed = chargeable + (rng.randint(1, 4) if kind == "overbilled" else 0)
    rate = rng.choice([45.0, 60.0, 75.0, 90.0])
    charge = Charge(charge_id=cid, container_id=container, terminal=rng.choice(["HAM-CTA", "HAM-CTB", "BRV-NTB"]),
                    amount=round(billed * rate, 2), currency="EUR", billed_days=billed,
                    hold="customs" if kind == "customs_hold" else "none", status="billed",
                    gate_in=gate_in.isoformat(), gate_out=(gate_in + timedelta(days=stored)).isoformat(),
                    free_days=free)
    reads = [_read("terminal_get_charge", cid)]
    where = {"charge_id": cid}
    if kind == "customs_hold":
        note = f"Container {container} was on a customs hold: the broker's charge."
        act = GoldAction(tool="terminal_refer_charge", args={"charge_id": cid, "team": "customs_brokerage",
                         "note": note}, key_args=["charge_id", "team"], writes=True, risk="low")
        gold = Gold(outcome="escalated", actions=[*reads, act], team="customs_brokerage", reason=note,
                    assertions=[StateAssertion(system="terminal", table="charges", where=where, count=1,
                                               values={"status": "referred"})])
    else:
        reads.append(_read("terminal_audit_charge", cid))
        if kind == "overbilled":
            reason = f"Audit: {chargeable} chargeable days, billed {billed}."
            act = GoldAction(tool="terminal_dispute_charge", args={"charge_id": cid, "claimed_days": chargeable,
                             "reason": reason}, key_args=["charge_id", "claimed_days"], writes=True, risk="low")
            status = "disputed"
        else:
            reason = f"Audit confirms {billed} chargeable days."
            act = GoldAction(tool="terminal_approve_charge", args={"charge_id": cid, "amount": charge.amount,
                             "note": reason}, key_args=["charge_id", "amount"], writes=True,
                             risk="high" if charge.amount > HIGH_RISK_ABOVE else "low")
            status = "approved"
        gold = Gold(outcome="resolved", actions=[*reads, act], reason=reason,
                    assertions=[StateAssertion(system="terminal", table="charges", where=where, count=1,
                                               values={"status": status})])
    description = rng.choice([
        "Terminal {t} billed {d} days demurrage on {c} ({a} EUR), charge {i}. Please check before payment run.",
        "Demurrage invoice line {i}: container {c}, {a} EUR. Is this right?",
        "pls check demurrage {i} for {c} - {d} days seems a lot",
        "Finance asks for approval of demurrage charge {i} ({c}, {t}).",
    ]).format(t=charge.terminal, d=billed, c=container, a=f"{charge.amount:.2f}", i=cid)
    inst = Instance(instance_id=f"{CLASS}-{seed}-{index:04d}", exception_type=CLASS, seed=seed, index=index,
                    variant=kind, description=description, entities={"charge_id": cid},
                    keys=[cid], setup=[], gold=gold, facts={"chargeable_days": chargeable, "billed_days": billed})
    return charge, inst.model_copy(update={"human": _ops_log(inst, charge, ops_err)})


def _read(tool: str, cid: str) -> GoldAction:
    return GoldAction(tool=tool, args={"charge_id": cid}, key_args=["charge_id"], writes=False, risk="low")


def _ops_log(inst: Instance, charge: Charge, wrong: bool) -> HumanLog:
    """What the ops clerk did: the gold's write, or (wrong) the other of approve/dispute."""
    write = inst.gold.actions[-1]
    tool, args, deviation = write.tool, write.args, None
    if wrong and inst.variant != "customs_hold":
        if tool == "terminal_dispute_charge":
            tool, args = "terminal_approve_charge", {"charge_id": charge.charge_id, "amount": charge.amount,
                                                     "note": "ok"}
        else:
            tool, args = "terminal_dispute_charge", {"charge_id": charge.charge_id,
                                                     "claimed_days": max(0, charge.billed_days - 1),
                                                     "reason": "too many days"}
        deviation = f"ops used {tool} where the audit says otherwise"
    return HumanLog(actor=random.Random(inst.instance_id).choice(["jana", "omar", "li"]),
                    outcome=inst.gold.outcome, actions=[HumanAction(tool=tool, args=args,
                                                                    at="2025-11-01T10:00:00+00:00")],
                    deviation=deviation, minutes=7)


def export_openapi() -> dict:
    """The document the client hands over (what `examples/demurrage_charge/terminal.openapi.json` holds)."""
    return create_app().openapi()


class TerminalService:
    """The service on a free loopback port in a daemon thread (a context manager), with its data."""

    def __init__(self, charges: list[Charge] = ()) -> None:
        import socket

        import uvicorn

        self.app = create_app()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    lifespan="off", timeout_keep_alive=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.initial = list(charges)

    def __enter__(self) -> TerminalService:
        import time

        import httpx

        self.thread.start()
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        if self.initial:
            self.load(self.initial)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()

    def load(self, charges: list[Charge]) -> None:
        import httpx

        httpx.post(f"{self.url}/admin/charges", json=[c.model_dump() for c in charges], timeout=10).raise_for_status()

    def statuses(self) -> dict[str, str]:
        import httpx

        return {c["charge_id"]: c["status"] for c in httpx.get(f"{self.url}/admin/charges", timeout=10).json()}
