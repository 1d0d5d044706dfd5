"""Two policy actors (Ray) on one PostgreSQL state database: the spending limits and the
approvals still hold, because the ledger and the approvals are the database's, not an actor's."""

from __future__ import annotations

import pytest
import ray

from opsagent.cluster.actors import PolicyActor
from opsagent.policy import ToolCallRequest, load_default_policy
from opsagent.policy.permits import KEY_ENV, PermitSigner
from tests.fakes.autonomy import credential

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

INVOICE, SHIPMENT, TICKET = "INV-00000001", "SHP-00000001", "TKT-00000001"
READS = {
    "tms_get_tracking": {"shipment_id": SHIPMENT, "damage_reported": "yes"},
    "tkt_get_ticket": {"ticket_id": TICKET, "status": "open", "claim_amount": 90.0,
                       "entities": {"invoice_id": INVOICE, "shipment_id": SHIPMENT}},
    "erp_get_invoice": {"invoice_id": INVOICE, "open_balance": 5000.0, "shipment_id": SHIPMENT},
}


def _credit(case: int) -> ToolCallRequest:
    """A 90 EUR credit on one invoice: the shipped policy lets one a day through per invoice."""
    return ToolCallRequest(
        case_id=f"case-{case}", exception_type="damage_claim", step=4, tool="erp_issue_credit",
        args={"invoice_id": INVOICE, "amount": 90.0, "reason": "damaged in transit"},
        entities={"shipment_id": SHIPMENT, "invoice_id": INVOICE, "ticket_id": TICKET}, observations=READS)


@pytest.fixture
def replicas(ray_runtime, postgres_server, platform, tmp_path_factory):
    """Two policy actors on one fresh PostgreSQL database (each test its own: no shared spend),
    each with a state folder of its own (two nodes), both given the signing key as the manifest
    gives it: OPSAGENT_PERMIT_SIGNING_KEY naming the mounted secret's file."""
    url = postgres_server.new_database("replicas")
    secret = tmp_path_factory.mktemp("permit-signing") / "permit-signing.pem"
    secret.write_bytes(PermitSigner.generate().private_pem())
    env = {"env_vars": {KEY_ENV: str(secret)}}
    actors = [PolicyActor.options(num_cpus=0, runtime_env=env).remote(
        load_default_policy(), platform.registry(), str(tmp_path_factory.mktemp("policy-node")),
        state_url=url) for _ in range(2)]
    keys = ray.get([a.public_keys.remote() for a in actors])
    assert keys == [PermitSigner.from_file(secret).public_pem()] * 2  # the secret's key, not a new one each
    ray.get(actors[0].set_mode.remote("damage_claim", "autonomous", credential(url), "test: two replicas"))
    yield url, actors
    for actor in actors:
        ray.kill(actor)


def test_credits_decided_on_two_replicas_at_once_pass_one_per_invoice(replicas) -> None:
    _, actors = replicas
    decisions = ray.get([actors[i % 2].authorize.remote(_credit(i)) for i in range(10)])
    allowed = [d for d in decisions if d.verdict == "allow"]
    allowed_on = [i % 2 for i, d in enumerate(decisions) if d.verdict == "allow"][0]
    assert len(allowed) == 1 and {d.verdict for d in decisions} == {"allow", "require_approval"}
    assert all("invoice_id=INV-00000001" in d.reasons[0] for d in decisions if d.verdict != "allow")
    # either replica's permit verifies with the other's public key: settled there, counted once
    assert ray.get(actors[1 - allowed_on].settle.remote(allowed[0].permit, executed=True)) == "committed"


def test_an_approval_decided_on_both_replicas_at_once_has_one_decision(replicas) -> None:
    url, actors = replicas
    first = ray.get(actors[1].authorize.remote(_credit(99)))  # the invoice's one credit of the day
    assert first.verdict == "allow" and ray.get(actors[1].settle.remote(first.permit, executed=True)) == "committed"
    request = _credit(100)
    held = ray.get(actors[0].authorize.remote(request))
    assert held.verdict == "require_approval"
    pending = ray.get(actors[0].request_approval.remote(request, held, None))
    approver, rejecter = credential(url, "rita", ["approver"]), credential(url, "rob", ["approver"])
    outcomes = []
    for ref in [actors[0].decide_approval.remote(pending.approval_id, approver, True, held.args_digest),
                actors[1].decide_approval.remote(pending.approval_id, rejecter, False, held.args_digest,
                                                 "not this one")]:
        try:
            outcomes.append(ray.get(ref).status.value)
        except Exception as exc:  # noqa: BLE001 - the loser's ApprovalError, through Ray
            assert "is already" in str(exc)
            outcomes.append("refused")
    assert sorted(outcomes) in (["approved", "refused"], ["refused", "rejected"])
    final = ray.get(actors[1].get_approval.remote(pending.approval_id))
    assert final.status.value in outcomes
    if final.status.value == "approved":  # the approved credit now runs, on either replica
        assert ray.get(actors[1].authorize.remote(request)).verdict == "allow"
