from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import BaseModel

from opsagent.errors import ConfigError
from opsagent.policy import (
    ArgConstraint,
    ClassPolicy,
    PolicyConfig,
    RiskCondition,
    ToolPolicy,
    load_default_policy,
)

MINIMAL = """
classes:
  weight_mismatch:
    tools:
      wms_get_shipment: {risk: low, scope: [shipment_id]}
"""


def test_default_policy_weight_mismatch_tiers() -> None:
    tools = load_default_policy().classes["weight_mismatch"].tools
    assert {name: t.risk for name, t in tools.items()} == {
        "wms_get_shipment": "low",
        "tms_get_shipment": "low",
        "tms_open_weight_dispute": "low",
        "wms_request_rescan": "low",
        "tms_adjust_billed_weight": "high",
    }
    assert "tms_withdraw_weight_dispute" not in tools
    dispute = tools["tms_open_weight_dispute"]
    assert dispute.scope == {"shipment_id": "shipment_id"}
    assert dispute.constraints["claimed_weight_kg"] == ArgConstraint(
        gt=0, le=10000, eq_read="wms_get_shipment.scanned_weight_kg"
    )
    assert dispute.reads == {"wms_get_shipment.scale_check": ArgConstraint(one_of=["passed"])}
    assert dispute.constraints["reason"].max_length == 500


def test_from_yaml_accepts_text_str_path_and_path(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(MINIMAL)
    from_text = PolicyConfig.from_yaml(MINIMAL)
    assert PolicyConfig.from_yaml(file) == from_text
    assert PolicyConfig.from_yaml(str(file)) == from_text


def test_version_is_stable_and_ignores_comments_and_key_order() -> None:
    reordered = """
# a comment
classes:
  weight_mismatch:
    tools:
      wms_get_shipment: {scope: [shipment_id], risk: low}
"""
    assert PolicyConfig.from_yaml(MINIMAL).version == PolicyConfig.from_yaml(reordered).version
    assert len(PolicyConfig.from_yaml(MINIMAL).version) == 12
    assert load_default_policy().version == load_default_policy().version


def test_version_follows_copies() -> None:
    config = load_default_policy()
    before = config.version
    changed = config.model_copy(update={"name": "stricter"})
    assert config.version == before != changed.version


def test_version_changes_when_content_changes() -> None:
    versions = {
        PolicyConfig.from_yaml(MINIMAL).version,
        PolicyConfig.from_yaml(MINIMAL.replace("risk: low", "risk: high")).version,
        PolicyConfig.from_yaml(MINIMAL.replace("scope: [shipment_id]", "scope: []")).version,
        PolicyConfig.from_yaml(MINIMAL.replace("wms_get_shipment", "tms_get_shipment")).version,
    }
    assert len(versions) == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("classes: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "expected a mapping"),
        (MINIMAL + "extra_field: 1\n", "extra_field"),
        (MINIMAL.replace("risk: low", "risk: medium"), "risk"),
        (MINIMAL.replace("risk: low", "risk: low, riks: high"), "riks"),
        ("classes:\n  x:\n    tools:\n      t: {risk: low, constraints: {a: {pattern: '('}}}\n", "regular expression"),
        ("classes:\n  x:\n    tools:\n      t: {risk: low, high_if: [{arg: a}]}\n", "needs one of"),
        ("name: x\n", "classes"),
    ],
)
def test_bad_policy_raises_config_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        PolicyConfig.from_yaml(text)


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PolicyConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("model", [PolicyConfig, ClassPolicy, ToolPolicy, ArgConstraint, RiskCondition])
def test_every_field_is_described(model: type[BaseModel]) -> None:
    assert all(field.description for field in model.model_fields.values())


def test_scope_mapping_form() -> None:
    policy = ToolPolicy.model_validate({"risk": "low", "scope": {"id": "shipment_id"}})
    assert policy.scope == {"id": "shipment_id"}


@pytest.mark.parametrize(
    ("constraint", "value", "ok"),
    [
        (ArgConstraint(gt=0, le=10000), 1, True),
        (ArgConstraint(gt=0, le=10000), 10000, True),
        (ArgConstraint(gt=0, le=10000), 0, False),
        (ArgConstraint(gt=0, le=10000), 10000.5, False),
        (ArgConstraint(gt=0, le=10000), math.nan, False),
        (ArgConstraint(gt=0, le=10000), math.inf, False),
        (ArgConstraint(gt=0, le=10000), True, False),
        (ArgConstraint(gt=0, le=10000), "5", False),
        (ArgConstraint(ge=1, lt=2), 1, True),
        (ArgConstraint(ge=1, lt=2), 2, False),
        (ArgConstraint(max_length=3), "abc", True),
        (ArgConstraint(max_length=3), "abcd", False),
        (ArgConstraint(min_length=1), "", False),
        (ArgConstraint(max_length=3), 12, False),
        (ArgConstraint(pattern=r"SHP-\d+"), "SHP-12", True),
        (ArgConstraint(pattern=r"SHP-\d+"), "SHP-12x", False),
        (ArgConstraint(one_of=["a", 1]), "a", True),
        (ArgConstraint(one_of=["a", 1]), 1.0, True),
        (ArgConstraint(one_of=["a", 1]), True, False),
        (ArgConstraint(one_of=["a", 1]), "b", False),
    ],
)
def test_arg_constraint(constraint: ArgConstraint, value: object, ok: bool) -> None:
    assert (constraint.violation(value) is None) is ok


@pytest.mark.parametrize(
    ("condition", "args", "matches"),
    [
        (RiskCondition(arg="w", above=50), {"w": 51}, True),
        (RiskCondition(arg="w", above=50), {"w": 50}, False),
        (RiskCondition(arg="w", at_least=50), {"w": 50}, True),
        (RiskCondition(arg="w", below=1), {"w": 0.5}, True),
        (RiskCondition(arg="w", at_most=1), {"w": 2}, False),
        (RiskCondition(arg="w", above=10, below=20), {"w": 15}, True),
        (RiskCondition(arg="w", above=10, below=20), {"w": 25}, False),
        (RiskCondition(arg="c", one_of=["DHL"]), {"c": "DHL"}, True),
        (RiskCondition(arg="c", one_of=["DHL"]), {"c": "UPS"}, False),
        # fail closed: what cannot be compared counts as high risk
        (RiskCondition(arg="w", above=50), {}, True),
        (RiskCondition(arg="w", above=50), {"w": "lots"}, True),
        (RiskCondition(arg="w", above=50), {"w": math.nan}, True),
    ],
)
def test_risk_condition(condition: RiskCondition, args: dict, matches: bool) -> None:
    assert (condition.matches(args) is not None) is matches
