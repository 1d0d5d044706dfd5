"""Autonomy gates: the Wilson interval, the comparator against the human log, evidence per stage
read from real traces, eligibility at its boundary, automatic demotion, and the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.agents.tracing.views import query
from opsagent.cli import main as cli
from opsagent.errors import AuthError, AutonomyError, InputError
from opsagent.evals.catalogue import CLASSES, HumanLog, make, plant
from opsagent.evals.evalset import write_eval_set
from opsagent.evals.gold import scripted_gold
from opsagent.evals.verdicts import Write, compare, compare_human_log, record_verdicts, review
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import GATES_ACTOR, AutonomyStore
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.gates import CaseVerdict, GateWatch, check, class_statuses, gate_mode_change
from opsagent.policy.identity import Identity, Role, TokenStore
from opsagent.policy.modes import Mode
from opsagent.policy.service import PolicyService
from opsagent.policy.stats import wilson
from tests.fakes.planners import gold_calls
from tests.fakes.verdicts import trace_verdicts
from opsagent.policy.state import state_db

ADMIN = Identity(name="ada", roles=frozenset({Role.admin}))
OPERATOR = Identity(name="omar", roles=frozenset({Role.approver}))
T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)
_SEEDS = itertools.count(4_800)


@pytest.mark.parametrize(("correct", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 100, 0.7222, 0.8749),
    (180, 200, 0.8506, 0.9343), (1, 1, 0.2065, 1.0),
])
def test_wilson_matches_known_values(correct, n, low, high) -> None:
    got = wilson(correct, n, 0.95)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges_and_bad_input() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(90, 100, 0.99)[0] < wilson(90, 100, 0.90)[0]  # more confidence, wider
    for bad in ((3, 2, 0.95), (-1, 2, 0.95), (1, 2, 1.0), (1, 2, 0.0)):
        with pytest.raises(ValueError):
            wilson(*bad)


# --- the comparator -------------------------------------------------------------------------

def _log(outcome, *actions) -> HumanLog:
    return HumanLog(actor="marta.k", outcome=outcome, deviation=None, minutes=5,
                    actions=[{"tool": t, "args": a, "at": "2026-05-01T10:00:00"} for t, a in actions])


WRITES = {"wms_get_shipment": False, "tms_open_weight_dispute": True}


def test_same_writes_and_outcome_agree_whatever_the_wording_and_reads() -> None:
    human = _log("resolved", ("wms_get_shipment", {"shipment_id": "S"}),
                 ("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 12.5, "reason": "done"}))
    agent = [Write.of("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 12.501,
                                                  "reason": "the scan says 12.5 kg"})]
    assert compare(agent, "resolved", human, WRITES).agree


@pytest.mark.parametrize(("agent", "outcome", "why"), [
    ([], "resolved", "ops wrote tms_open_weight_dispute"),
    ([Write.of("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 13.0})], "resolved",
     "the agent wrote tms_open_weight_dispute(claimed_weight_kg=13.0"),
    ([Write.of("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 12.5})], "escalated",
     "outcome escalated vs ops' resolved"),
    ([Write.of("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 12.5})] * 2, "resolved",
     "the agent wrote tms_open_weight_dispute"),  # a second, duplicate write is a difference too
])
def test_a_different_write_or_outcome_disagrees(agent, outcome, why) -> None:
    human = _log("resolved", ("tms_open_weight_dispute", {"shipment_id": "S", "claimed_weight_kg": 12.5}))
    result = compare(agent, outcome, human, WRITES)
    assert not result.agree and why in result.reason


def test_an_unknown_human_tool_counts_as_a_write_and_an_open_ticket_is_not_comparable() -> None:
    human = _log("escalated", ("crm_call_customer", {"phone": "123"}))
    assert not compare([], "escalated", human, WRITES).agree
    assert compare([], "escalated", _log(None), WRITES) is None


def test_gold_agrees_with_every_human_log_that_follows_it() -> None:
    """The catalogue's human logs: gold-following ones agree, the deviations that change a write or
    the outcome do not, an extra or skipped read does not matter."""
    seen = {}
    for name in CLASSES:
        for inst in make(name, seed=11, count=40):
            writes = {a.tool: a.writes for a in inst.gold.actions} | {"tkt_get_ticket": False}
            result = compare([Write.of(a.tool, a.args) for a in inst.gold.actions if a.writes],
                             inst.gold.outcome, inst.human, writes)
            seen.setdefault(inst.human.deviation, set()).add(None if result is None else result.agree)
    assert seen[None] == {True} and seen["extra_read"] == {True} and seen["skipped_read"] == {True}
    assert seen["over_escalated"] == {False} and seen["other_team"] == {False}
    assert seen["ticket_left_open"] == {None}


# --- evidence from traces, eligibility, demotion ----------------------------------------------

def _trace(root: Path, exception_type: str, mode: str | None, results: list[bool], start: datetime,
           source: str = "review") -> list[str]:
    return trace_verdicts(root, exception_type, mode, results, start, source=source)


def _store(mode: str, at: datetime = T0) -> AutonomyStore:
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", mode, identity=ADMIN, reason="test", now=at)
    return store


def _verdicts(n: int, correct: int, mode: str = "shadow") -> list[CaseVerdict]:
    return [CaseVerdict(case_id=f"c{i}", exception_type="weight_mismatch", mode=mode, source="human_log",
                        received_at=T0 + timedelta(minutes=i + 1), correct=i < correct) for i in range(n)]


def _status(store, verdicts, config=None):
    statuses = class_statuses(verdicts, store, config or load_default_policy())
    return next(s for s in statuses if s.exception_type == "weight_mismatch")


def test_eligibility_needs_enough_cases_and_a_lower_bound_at_the_threshold() -> None:
    store = _store("shadow")
    at_boundary = _status(store, _verdicts(200, 180))  # Wilson lower bound 0.8506 >= 0.85
    assert at_boundary.eligible and at_boundary.next_mode == Mode.supervised
    assert at_boundary.evidence.n == 200 and at_boundary.evidence.low == pytest.approx(0.8506, abs=1e-4)
    just_below = _status(store, _verdicts(200, 179))  # 0.8448
    assert not just_below.eligible and "lower bound 0.845 < 0.85" in just_below.why
    too_few = _status(store, _verdicts(199, 199))
    assert not too_few.eligible and "needs 1 more" in too_few.why
    # evidence of another stage, or from before the class entered its mode, does not count
    other = _status(store, _verdicts(200, 200, mode="autonomous"))
    assert other.evidence.n == 0
    late = _status(_store("shadow", at=T0 + timedelta(days=1)), _verdicts(200, 200))
    assert late.evidence.n == 0
    top = _status(_store("autonomous"), _verdicts(200, 200, mode="autonomous"))
    assert not top.eligible and top.next_mode is None


def test_a_class_below_its_gate_is_demoted_and_the_demotion_recorded(tmp_path) -> None:
    config = load_default_policy()
    store = _store("autonomous")
    _trace(tmp_path, "weight_mismatch", "autonomous", [True] * 14 + [False] * 5, T0 + timedelta(hours=1))
    assert check(case_verdicts(tmp_path), store, config) == []  # 19 verdicts: fewer than demote_min_cases (20)
    _trace(tmp_path, "weight_mismatch", "autonomous", [False], T0 + timedelta(hours=2))
    status = next(s for s in class_statuses(case_verdicts(tmp_path), store, config) if s.exception_type == "weight_mismatch")
    assert (status.recent.n, status.recent.correct, status.below_gate) == (20, 14, False)  # upper 0.855
    _trace(tmp_path, "weight_mismatch", "autonomous", [False], T0 + timedelta(hours=3))
    (demotion,) = check(case_verdicts(tmp_path), store, config)  # 14/21: upper bound 0.83 < 0.85
    assert (demotion.from_mode, demotion.to_mode, demotion.actor, demotion.automatic) == (
        "autonomous", "supervised", GATES_ACTOR, True)
    assert "14/21" in demotion.reason and "upper bound" in demotion.reason
    assert store.mode("weight_mismatch") == Mode.supervised
    assert check(case_verdicts(tmp_path), store, config) == []  # supervised starts afresh: no evidence yet
    other_classes = {s.exception_type: s.mode for s in class_statuses(case_verdicts(tmp_path), store, config)}
    assert other_classes["damage_claim"] == Mode.shadow  # never recorded: the policy's initial mode


def test_shadow_is_not_demoted_and_rows_without_a_mode_are_no_evidence(tmp_path) -> None:
    config = load_default_policy()
    _trace(tmp_path, "weight_mismatch", None, [True] * 30, T0 + timedelta(hours=1))  # pre-v5 rows
    _trace(tmp_path, "damage_claim", "shadow", [False] * 30, T0 + timedelta(hours=1), source="human_log")
    store = AutonomyStore(":memory:")
    store.seed(config, now=T0)
    statuses = {s.exception_type: s for s in class_statuses(case_verdicts(tmp_path), store, config)}
    assert statuses["weight_mismatch"].evidence.n == 0
    assert statuses["damage_claim"].evidence.correct == 0 and statuses["damage_claim"].evidence.n == 30
    assert not statuses["damage_claim"].below_gate and check(case_verdicts(tmp_path), store, config) == []


# --- shadow cases through the real runner, compared with the human log -------------------------

@pytest.fixture(scope="module")
def shadow_run(platform, registry, tmp_path_factory):
    """Every variant of three classes run in shadow mode (the shipped default) with the gold as the
    planner, traced to a folder whose eval set holds the human logs; the store is the state's."""
    root, state, evalset = (tmp_path_factory.mktemp(n) for n in ("traces", "state", "evalset"))
    instances = []
    for name in ("weight_mismatch", "address_rejected", "damage_claim"):
        pool = make(name, seed=next(_SEEDS), count=8)
        instances += [next(i for i in pool if i.variant == v) for v in CLASSES[name].variants]
    plant(instances, platform)
    write_eval_set(instances, evalset, seed=4800)
    store = AutonomyStore(state_db(state))
    policy = PolicyEngine(load_default_policy(), registry, autonomy=store)
    service = PolicyService(policy, ApprovalStore(":memory:"))
    books = builtin_playbooks()
    before = {s: _count(platform, s) for s in ("tms", "erp", "tkt")}

    async def run_all() -> list[Case]:
        executor = Executor(registry, policy.verifier)
        with ParquetExporter(root) as traces:
            cases = []
            for inst in instances:
                book = books[inst.exception_type]
                engine = ScriptedEngine([scripted_gold(inst, book)] * await gold_calls(
                    inst, book, registry, service.allowed_tools(inst.exception_type)))
                runner = CaseRunner(Planner(engine, books, registry), LocalPolicy(service), executor,
                                    LocalTracer(traces), registry, max_steps=8)
                report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                         entities=inst.entities)
                cases.append(await runner.run(Case(report=report)))
        await executor.close()
        return cases

    cases = asyncio.run(run_all())
    return dict(root=root, state=state, evalset=evalset, instances=instances, cases=cases, store=store,
                before=before, after={s: _count(platform, s) for s in before})


def _count(platform, system: str) -> dict:
    import httpx

    return httpx.get(f"{platform.base_urls[system]}/_admin/digest", timeout=10).json()["digest"]


def test_shadow_runs_write_nothing_and_reproduce_the_gold(shadow_run) -> None:
    assert shadow_run["after"] == shadow_run["before"]  # no system of record changed
    for inst, case in zip(shadow_run["instances"], shadow_run["cases"], strict=True):
        gold_writes = [a.tool for a in inst.gold.actions if a.writes]
        proposed = [s.tool for s in case.steps if s.verdict == "propose"]
        assert proposed == gold_writes, (inst.variant, case.reason)
        assert case.status == (CaseStatus.proposed if gold_writes else CaseStatus(inst.gold.outcome))
        assert (case.outcome or case.status.value) == inst.gold.outcome


def _own_root(shadow_run, tmp_path):
    """A copy of the shadow run's traces for a test that writes verdicts into them: the shared
    root stays as the run left it, whatever order the tests run in."""
    return shutil.copytree(shadow_run["root"], tmp_path / "own-traces")


def test_compare_records_verdicts_that_make_the_shadow_evidence(shadow_run, registry, tmp_path) -> None:
    root, instances = _own_root(shadow_run, tmp_path), shadow_run["instances"]
    writes = {s.name: s.writes for s in registry.specs()}
    report = compare_human_log(root, shadow_run["evalset"] / "human_log.jsonl", writes=writes)
    expected = {i.instance_id: None if i.human.outcome is None else
                compare([Write.of(a.tool, a.args) for a in i.gold.actions if a.writes], i.gold.outcome,
                        i.human, writes).agree for i in instances}
    by_case = {c.case_id: i.instance_id for i, c in zip(instances, shadow_run["cases"], strict=True)}
    got = {by_case[v.case_id]: v.correct for v in report.verdicts}
    assert got == {k: v for k, v in expected.items() if v is not None}
    assert len(report.incomparable) == sum(v is None for v in expected.values())
    assert {v.autonomy_mode for v in report.verdicts} == {"shadow"} and report.unmatched == []
    store, config = shadow_run["store"], load_default_policy()
    assert record_verdicts(root, report.verdicts, store, config) == []  # shadow: nothing to demote
    rows = query(root, "SELECT source, actor, count(*) FROM verdicts GROUP BY ALL")[1]
    assert rows == [("human_log", "opsagent-compare", len(report.verdicts))]
    statuses = {s.exception_type: s for s in class_statuses(case_verdicts(root), store, config)}
    for name in ("weight_mismatch", "address_rejected", "damage_claim"):
        mine = [v for v in report.verdicts if v.exception_type == name]
        assert (statuses[name].evidence.n, statuses[name].evidence.correct) == (
            len(mine), sum(v.correct for v in mine))
        assert statuses[name].mode == Mode.shadow and not statuses[name].eligible


def test_compare_refuses_a_log_it_cannot_place(shadow_run, tmp_path) -> None:
    log = tmp_path / "human_log.jsonl"
    log.write_text(json.dumps({"instance_id": "nope", "actor": "x", "outcome": "resolved", "actions": []}) + "\n")
    with pytest.raises(InputError, match="no instance 'nope'"):
        compare_human_log(shadow_run["root"], log)
    log.write_text("{not json\n")
    with pytest.raises(InputError, match="not JSON"):
        compare_human_log(shadow_run["root"], log)
    line = {"exception_type": "weight_mismatch", "entities": {"shipment_id": "SHP-NOWHERE"}, "actor": "x",
            "outcome": "resolved", "actions": []}
    log.write_text(json.dumps(line) + "\n")
    assert compare_human_log(shadow_run["root"], log).unmatched == ["line 1"]


def test_review_needs_an_operator_and_a_finished_case(shadow_run, tmp_path) -> None:
    root, case = _own_root(shadow_run, tmp_path), shadow_run["cases"][0]
    with pytest.raises(AuthError):
        review(root, case.case_id, correct=True, reason="fine",
               identity=Identity(name="sam", roles=frozenset({Role.submitter})))
    with pytest.raises(InputError, match="no traced case"):
        review(root, "case-nope", correct=True, reason="fine", identity=OPERATOR)
    with pytest.raises(InputError, match="needs a reason"):
        review(root, case.case_id, correct=True, reason=" ", identity=OPERATOR)
    event = review(root, case.case_id, correct=False, reason="claimed the wrong weight", identity=OPERATOR)
    assert (event.source, event.actor, event.autonomy_mode, event.correct) == ("review", "omar", "shadow", False)


# --- the command line --------------------------------------------------------------------------

def test_cli_status_set_review_and_check(shadow_run, tmp_path, capsys, monkeypatch) -> None:
    root, cases = _own_root(shadow_run, tmp_path), shadow_run["cases"]
    state = tmp_path / "state"
    tokens = TokenStore(state_db(state))
    admin, operator = tokens.add("ada", ["admin"]), tokens.add("omar", ["approver"])
    common = ["--traces", str(root), "--state", str(state)]
    assert cli(["autonomy", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "weight_mismatch" in out and "needs 200 more" in out
    assert cli(["autonomy", "status", "--json", *common]) == 0
    statuses = {c["exception_type"]: c for c in json.loads(capsys.readouterr().out)}
    assert statuses["weight_mismatch"]["mode"] == "shadow" and "evidence" in statuses["weight_mismatch"]

    base = ["autonomy", "set", "weight_mismatch", "supervised", "--reason", "looks fine", *common]
    assert cli([*base, "--token", operator]) == 1
    assert "lacks the admin role" in capsys.readouterr().err
    assert cli([*base, "--token", admin]) == 1  # the gates do not allow it yet
    assert "gates do not allow supervised" in capsys.readouterr().err
    monkeypatch.setenv("OPSAGENT_TOKEN", admin)
    assert cli([*base, "--override"]) == 0
    assert "shadow -> supervised by ada" in capsys.readouterr().out
    store = AutonomyStore(state_db(state))
    last = store.last_change("weight_mismatch")
    assert last.to_mode == Mode.supervised and "[override of the gate: needs 200 more" in last.reason
    assert "evidence in shadow: 0/0 correct" in last.reason
    assert cli(["autonomy", "set", "weight_mismatch", "shadow", "--reason", "back", *common]) == 0  # down: ok
    assert cli(["autonomy", "set", "lost_parcel", "shadow", "--reason", "x", *common]) == 1

    case_id = next(c.case_id for c in cases if c.report.exception_type == "weight_mismatch")
    assert cli(["autonomy", "review", case_id, "--wrong", "--reason", "bad", "--token", operator, *common]) == 0
    assert "wrong (weight_mismatch, shadow) by omar" in capsys.readouterr().out
    assert cli(["autonomy", "check", *common]) == 0
    assert "no class is below its gate" in capsys.readouterr().out
    assert [h.actor for h in store.history("weight_mismatch")] == ["opsagent-policy", "ada", "ada"]


def test_cli_demotes_through_check(tmp_path, capsys) -> None:
    state = tmp_path / "state"
    store = AutonomyStore(state_db(state))
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="test", now=T0)
    _trace(tmp_path / "traces", "weight_mismatch", "autonomous", [False] * 20, T0 + timedelta(hours=1))
    policy = tmp_path / "policy.yaml"
    config = load_default_policy()
    policy.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    assert PolicyConfig.from_yaml(policy).version == config.version
    assert cli(["autonomy", "check", "--traces", str(tmp_path / "traces"), "--state", str(state),
                "--policy", str(policy)]) == 0
    assert "demoted weight_mismatch: autonomous -> supervised" in capsys.readouterr().out
    assert AutonomyStore(state_db(state)).last_change("weight_mismatch").actor == GATES_ACTOR


# --- an admin's mode change: the one rule of the API and the CLI ------------------------------

def test_demotion_and_staying_are_always_allowed() -> None:
    for current, target in (("autonomous", "shadow"), ("autonomous", "supervised"), ("supervised", "shadow"),
                            ("shadow", "shadow")):
        assert gate_mode_change("weight_mismatch", current, target, reason=" why ") == "why"


def test_a_promotion_needs_eligibility_and_skips_no_stage() -> None:
    store = _store("shadow")
    eligible, ineligible = _status(store, _verdicts(200, 190)), _status(store, _verdicts(200, 150))
    assert gate_mode_change("weight_mismatch", "shadow", "supervised", reason="earned", status=eligible) == "earned"
    with pytest.raises(AutonomyError) as refused:
        gate_mode_change("weight_mismatch", "shadow", "supervised", reason="go", status=ineligible)
    message = str(refused.value)
    assert "gates do not allow supervised" in message and "150/200 correct" in message
    assert "lower bound 0.686 < 0.85" in message and "n >= 200" in message and "override" in message
    for override in (False, True):  # two stages at once: refused, evidence or override notwithstanding
        with pytest.raises(AutonomyError, match="would skip supervised"):
            gate_mode_change("weight_mismatch", "shadow", "autonomous", reason="go", override=override,
                             status=eligible)


def test_an_override_promotes_an_ineligible_class_and_says_so() -> None:
    status = _status(_store("shadow"), _verdicts(10, 10))
    reason = gate_mode_change("weight_mismatch", "shadow", "supervised", reason="pilot with ops lead",
                              override=True, status=status)
    assert reason.startswith("pilot with ops lead [override of the gate: needs 190 more")
    assert "10/10 correct" in reason and "Wilson 95% [0.722, 1.000]" in reason
    eligible = _status(_store("shadow"), _verdicts(200, 200))  # an override nobody needed is not recorded
    assert gate_mode_change("weight_mismatch", "shadow", "supervised", reason="ok", override=True,
                            status=eligible) == "ok"


def test_a_mode_change_refuses_bad_input() -> None:
    status = _status(_store("shadow"), _verdicts(10, 10))
    with pytest.raises(AutonomyError, match="needs a reason"):
        gate_mode_change("weight_mismatch", "shadow", "supervised", reason="  ", override=True, status=status)
    with pytest.raises(AutonomyError, match="'reckless' is not a valid Mode; modes: shadow, supervised"):
        gate_mode_change("weight_mismatch", "shadow", "reckless", reason="x")
    with pytest.raises(ValueError, match="judged on its gate status"):
        gate_mode_change("weight_mismatch", "shadow", "supervised", reason="x")
    with pytest.raises(AutonomyError, match="is shadow by now, not supervised"):
        gate_mode_change("weight_mismatch", "supervised", "autonomous", reason="x", status=status)


def _eligible_traces(root: Path, at: datetime) -> None:
    _trace(root, "weight_mismatch", "shadow", [True] * 200, at, source="human_log")


def test_cli_set_goes_through_the_gate(tmp_path, capsys, monkeypatch) -> None:
    state, traces = tmp_path / "state", tmp_path / "traces"
    monkeypatch.setenv("OPSAGENT_TOKEN", TokenStore(state_db(state)).add("ada", ["admin"]))
    common = ["--traces", str(traces), "--state", str(state)]
    assert cli(["autonomy", "status", *common]) == 0
    capsys.readouterr()
    _eligible_traces(traces, datetime.now(UTC) + timedelta(seconds=1))
    assert cli(["autonomy", "set", "weight_mismatch", "autonomous", "--reason", "go", "--force", *common]) == 1
    assert "would skip supervised" in capsys.readouterr().err
    assert cli(["autonomy", "set", "weight_mismatch", "supervised", "--reason", "200/200 in shadow", *common]) == 0
    assert "shadow -> supervised by ada" in capsys.readouterr().out
    assert cli(["autonomy", "set", "weight_mismatch", "autonomous", "--reason", "go", *common]) == 1
    assert "needs 200 more" in capsys.readouterr().err  # supervised earns its own evidence
    assert cli(["autonomy", "set", "weight_mismatch", "autonomous", "--reason", "go", "--force", *common]) == 0
    history = AutonomyStore(state_db(state)).history("weight_mismatch")
    assert [(h.to_mode, h.reason.split(" [")[0], "[override of the gate" in h.reason) for h in history[1:]] == [
        (Mode.supervised, "200/200 in shadow", False), (Mode.autonomous, "go", True)]
    assert cli(["autonomy", "set", "weight_mismatch", "shadow", "--reason", "incident 42", *common]) == 0


# --- automatic demotion in a running system ---------------------------------------------------

def _failing(root: Path, n: int = 20) -> None:
    _trace(root, "weight_mismatch", "autonomous", [False] * n, datetime.now(UTC) + timedelta(seconds=1))


def test_gate_watch_demotes_and_survives_a_failing_check(tmp_path, caplog) -> None:
    config = load_default_policy()
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="test")
    _failing(tmp_path)
    broken = GateWatch(partial(case_verdicts, tmp_path), store, lambda: (_ for _ in ()).throw(RuntimeError("no policy")), interval_s=60)
    assert broken.run_once() == [] and "gate check" in caplog.text and "no policy" in caplog.text
    assert store.mode("weight_mismatch") == Mode.autonomous
    (change,) = GateWatch(partial(case_verdicts, tmp_path), store, lambda: config, interval_s=60).run_once()
    assert (change.to_mode, change.actor, change.automatic) == (Mode.supervised, GATES_ACTOR, True)
    with pytest.raises(ValueError, match="interval_s > 0"):
        GateWatch(partial(case_verdicts, tmp_path), store, lambda: config, interval_s=0)


def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not so within {timeout_s} s")
        time.sleep(0.02)


def test_gate_watch_checks_after_a_nudge_and_periodically(tmp_path) -> None:
    config = load_default_policy()
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="test")
    _failing(tmp_path)
    nudged = GateWatch(partial(case_verdicts, tmp_path), store, lambda: config, interval_s=3600, settle_s=0).start()
    try:
        assert nudged.checks == 0
        nudged.nudge()
        _until(lambda: store.mode("weight_mismatch") == Mode.supervised)
        assert store.last_change("weight_mismatch").actor == GATES_ACTOR
    finally:
        nudged.stop()
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="again")
    _failing(tmp_path)
    periodic = GateWatch(partial(case_verdicts, tmp_path), store, lambda: config, interval_s=0.05).start()
    try:
        _until(lambda: store.mode("weight_mismatch") == Mode.supervised)
    finally:
        periodic.stop()
