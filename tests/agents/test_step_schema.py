import jsonschema
import pytest

from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.step_schema import FINISH, PlannedStep, step_schema
from opsagent.tools.spec import ToolSpec


def _tool(name, props, required, writes=False):
    return ToolSpec(name=name, system="tms", method="POST" if writes else "GET", path="/x",
                    description=f"{name} does things", parameters={
                        "type": "object", "properties": props, "required": required,
                        "additionalProperties": False},
                    path_params=[], body_params=list(props), writes=writes,
                    reversible=True if writes else None, inverse=None, supports_dry_run=writes)


@pytest.fixture
def schema():
    tools = [
        _tool("get_shipment", {"shipment_id": {"type": "string"}}, ["shipment_id"]),
        _tool("open_dispute", {"shipment_id": {"type": "string"},
                               "claimed_weight_kg": {"type": "number", "exclusiveMinimum": 0},
                               "reason": {"type": "string", "maxLength": 500}},
              ["shipment_id", "claimed_weight_kg", "reason"], writes=True),
    ]
    playbook = builtin_playbooks()["weight_mismatch"].model_copy(update={"prerequisites": {}})
    case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="billed more",
                                       entities={"shipment_id": "SHP-1"}))
    return step_schema(playbook, tools, case)


def test_accepts_tool_calls_and_finish(schema):
    ok = [
        {"evidence": {"scale_check": "unknown"}, "tool": "get_shipment", "args": {"shipment_id": "SHP-1"}},
        {"evidence": {"scale_check": "unknown"}, "tool": "open_dispute",
         "args": {"shipment_id": "SHP-1", "claimed_weight_kg": 3.5, "reason": "scan"}},
        {"evidence": {"scale_check": "unknown"}, "tool": FINISH, "status": "resolved", "reason": "done"},
    ]
    for out in ok:
        jsonschema.validate(out, schema)
        PlannedStep.model_validate(out)


@pytest.mark.parametrize("out", [
    {"evidence": {"scale_check": "unknown"}, "tool": "delete_everything", "args": {}},
    {"evidence": {"scale_check": "unknown"}, "tool": "get_shipment", "args": {"shipment_id": "SHP-2"}},
    {"evidence": {"scale_check": "passed"}, "tool": "get_shipment", "args": {"shipment_id": "SHP-1"}},
    {"tool": "get_shipment", "args": {"shipment_id": "SHP-1"}},
    {"evidence": {"scale_check": "unknown"}, "tool": "open_dispute",
     "args": {"shipment_id": "SHP-1", "claimed_weight_kg": 3, "reason": "x" * 81}},
    {"evidence": {"scale_check": "unknown"}, "tool": FINISH, "status": "done", "reason": "ok ok"},
    {"evidence": {"scale_check": "unknown"}, "tool": "get_shipment",
     "args": {"shipment_id": "SHP-1", "extra": 1}},
])
def test_rejects_tools_outside_the_set_other_entities_and_long_strings(schema, out):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(out, schema)


def _read(case, tool, result):
    case.steps.append(Step(step=len(case.steps) + 1, tool=tool, executed=True, ok=True, result=result))


def test_state_narrows_the_schema_as_the_case_progresses():
    """Prerequisites gate tools, done tools drop out, evidence and bound args pin to what was read,
    and the case can be resolved only after the resolving write succeeded."""
    playbook = builtin_playbooks()["weight_mismatch"]
    tools = [
        _tool("wms_get_shipment", {"shipment_id": {"type": "string"}}, ["shipment_id"]),
        _tool("tms_get_shipment", {"shipment_id": {"type": "string"}}, ["shipment_id"]),
        _tool("tms_open_weight_dispute", {"shipment_id": {"type": "string"},
                                          "claimed_weight_kg": {"type": "number"},
                                          "reason": {"type": "string"}},
              ["shipment_id", "claimed_weight_kg", "reason"], writes=True),
    ]
    case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="x",
                                       entities={"shipment_id": "SHP-1"}))

    def offered(schema):
        return {v["properties"]["tool"]["const"]: v for v in schema["anyOf"]}

    first = offered(step_schema(playbook, tools, case))
    assert set(first) == {"wms_get_shipment", FINISH}
    assert first[FINISH]["properties"]["status"]["enum"] == ["escalated"]
    assert first[FINISH]["properties"]["evidence"]["properties"]["scale_check"]["enum"] == ["unknown"]

    _read(case, "wms_get_shipment", {"scale_check": "failed", "scanned_weight_kg": 4.2})
    _read(case, "tms_get_shipment", {"billed_weight_kg": 6.0})
    third = offered(step_schema(playbook, tools, case))
    assert set(third) == {"tms_open_weight_dispute", FINISH}
    dispute = third["tms_open_weight_dispute"]["properties"]
    assert dispute["evidence"]["properties"]["scale_check"]["enum"] == ["failed"]
    assert dispute["args"]["properties"]["claimed_weight_kg"] == {"enum": [4.2]}
    assert third[FINISH]["properties"]["status"]["enum"] == ["escalated"]

    _read(case, "tms_open_weight_dispute", {"dispute_id": "WD-1"})
    assert offered(step_schema(playbook, tools, case))[FINISH]["properties"]["status"]["enum"] == [
        "resolved", "escalated"]
