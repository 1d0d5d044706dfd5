from pathlib import Path

import pytest

from opsagent.errors import ToolError
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.platform import tms, wms


@pytest.fixture(scope="module")
def carrier_tools(tmp_path_factory: pytest.TempPathFactory) -> dict:
    doc = tms.create_app(Path(tmp_path_factory.mktemp("tms")) / "tms.sqlite").openapi()
    return {s.name: s for s in tools_from_openapi(doc, "tms")}


@pytest.fixture(scope="module")
def warehouse_tools(tmp_path_factory: pytest.TempPathFactory) -> dict:
    doc = wms.create_app(Path(tmp_path_factory.mktemp("wms")) / "wms.sqlite").openapi()
    return {s.name: s for s in tools_from_openapi(doc, "wms")}


def test_operation_lists(carrier_tools, warehouse_tools):
    # the weight-mismatch tools; the full lists of all four systems are in tests/tools/platform
    assert {"tms_get_shipment", "tms_get_weight_dispute", "tms_open_weight_dispute",
            "tms_withdraw_weight_dispute", "tms_adjust_billed_weight"} <= set(carrier_tools)
    assert {"wms_get_shipment", "wms_get_scale", "wms_request_rescan",
            "wms_cancel_rescan_request"} <= set(warehouse_tools)
    assert all(s.system == "tms" for s in carrier_tools.values())
    assert not any(s.path.startswith("/_admin") for s in [*carrier_tools.values(), *warehouse_tools.values()])


def test_write_tool_merges_path_and_body(carrier_tools):
    spec = carrier_tools["tms_open_weight_dispute"]
    assert (spec.method, spec.path) == ("POST", "/shipments/{shipment_id}/weight-disputes")
    assert spec.path_params == ["shipment_id"]
    assert spec.body_params == ["claimed_weight_kg", "reason"]
    schema = spec.parameters
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"shipment_id", "claimed_weight_kg", "reason"}
    assert schema["required"] == ["shipment_id", "claimed_weight_kg", "reason"]
    assert schema["properties"]["claimed_weight_kg"]["exclusiveMinimum"] == 0
    assert schema["properties"]["reason"]["maxLength"] == 500
    assert "$ref" not in str(schema) and "title" not in str(schema)
    # transport controls are not arguments
    assert "dry_run" not in schema["properties"] and "Idempotency-Key" not in schema["properties"]
    assert spec.writes and spec.reversible is True and spec.inverse == "tms_withdraw_weight_dispute"
    assert spec.supports_dry_run
    assert "dispute" in spec.description.lower()


def test_extensions_decide_risk_fields(carrier_tools, warehouse_tools):
    adjust = carrier_tools["tms_adjust_billed_weight"]
    assert adjust.writes and adjust.reversible is False and adjust.inverse is None
    read = carrier_tools["tms_get_shipment"]
    assert not read.writes and read.reversible is None and not read.supports_dry_run
    assert read.body_params == [] and read.parameters["required"] == ["shipment_id"]
    rescan = warehouse_tools["wms_request_rescan"]
    assert rescan.reversible is True and rescan.inverse == "wms_cancel_rescan_request"
    assert rescan.parameters["required"] == ["shipment_id", "reason"]  # priority has a default


def _doc(**operation) -> dict:
    return {
        "openapi": "3.1.0",
        "paths": {"/things/{thing_id}": {
            "parameters": [{"$ref": "#/components/parameters/ThingId"}],
            "post": {"operationId": "make_thing", "summary": "Make.", **operation},
        }},
        "components": {
            "parameters": {"ThingId": {"name": "thing_id", "in": "path", "required": True,
                                       "schema": {"type": "integer"}}},
            "schemas": {
                "Body": {"type": "object", "title": "Body", "required": ["size"],
                         "properties": {"size": {"$ref": "#/components/schemas/Size"},
                                        "title": {"type": "string", "title": "Title"}}},
                "Size": {"type": "string", "enum": ["S", "M"], "title": "Size"},
            },
        },
    }


def test_refs_are_resolved_and_a_property_named_title_survives():
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Body"}}}}
    (spec,) = tools_from_openapi(_doc(requestBody=body), "things")
    assert spec.parameters["properties"] == {
        "thing_id": {"type": "integer"},
        "size": {"type": "string", "enum": ["S", "M"]},
        "title": {"type": "string"},
    }
    assert spec.parameters["required"] == ["thing_id", "size"]
    assert spec.writes and spec.reversible is None and not spec.supports_dry_run


def test_internal_operations_and_operations_without_id_are_skipped():
    assert tools_from_openapi(_doc(**{"x-opsagent-internal": True}), "things") == []
    doc = _doc()
    del doc["paths"]["/things/{thing_id}"]["post"]["operationId"]
    assert tools_from_openapi(doc, "things") == []


def test_query_parameters_become_arguments():
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 50}}
    tag = {"name": "tag", "in": "query", "required": True, "description": "Which tag."}
    (spec,) = tools_from_openapi(_doc(parameters=[limit, tag]), "things")
    assert spec.query_params == ["limit", "tag"] and spec.path_params == ["thing_id"]
    assert spec.parameters["properties"]["limit"] == {"type": "integer", "maximum": 50}
    assert spec.parameters["properties"]["tag"] == {"type": "string", "description": "Which tag."}
    assert spec.parameters["required"] == ["thing_id", "tag"]  # an optional query param is optional


def test_unsupported_shapes_raise_tool_error_or_are_skipped_when_asked():
    header = {"name": "X-Tenant", "in": "header", "schema": {"type": "string"}}
    with pytest.raises(ToolError, match="X-Tenant"):
        tools_from_openapi(_doc(parameters=[header]), "things")
    skipped: dict[str, str] = {}
    assert tools_from_openapi(_doc(parameters=[header]), "things", skipped=skipped) == []
    assert list(skipped) == ["make_thing"] and "header parameter 'X-Tenant'" in skipped["make_thing"]
    with pytest.raises(ToolError, match="not an OpenAPI document"):
        tools_from_openapi({"openapi": "3.1.0"}, "things")
    clash = {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"thing_id": {"type": "string"}}}}}}
    with pytest.raises(ToolError, match="collides"):
        tools_from_openapi(_doc(requestBody=clash), "things")
    with pytest.raises(ToolError, match="unresolvable"):
        tools_from_openapi(_doc(requestBody={"$ref": "#/components/requestBodies/Nope"}), "things")
