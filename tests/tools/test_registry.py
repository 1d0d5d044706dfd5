import pickle
import socket

import pytest

from opsagent.errors import ToolCallError, ToolError
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec


def test_unknown_names_raise_tool_error(registry: ToolRegistry):
    with pytest.raises(ToolError, match="unknown tool 'tms_refund_everything'"):
        registry.get("tms_refund_everything")
    with pytest.raises(ToolError, match="unknown system"):
        registry.base_url("payroll")
    with pytest.raises(ToolError):
        registry.subset(["wms_get_shipment", "nope"])


def test_registry_lists_both_systems(registry: ToolRegistry, platform):
    assert "tms_open_weight_dispute" in registry and "wms_get_shipment" in registry
    assert registry.names() == sorted(registry.names())
    assert registry.get("wms_get_shipment").system == "wms"
    assert registry.base_url("tms") == platform.base_urls["tms"]


def test_subset_and_pickle(registry: ToolRegistry):
    small = registry.subset(["tms_get_shipment", "wms_get_shipment"])
    assert small.names() == ["tms_get_shipment", "wms_get_shipment"]
    assert len(registry) > len(small)
    clone = pickle.loads(pickle.dumps(small))
    assert clone.names() == small.names()
    assert clone.get("tms_get_shipment") == small.get("tms_get_shipment")
    assert clone.base_urls == small.base_urls


def test_construction_rejects_duplicates_and_unknown_systems(registry: ToolRegistry):
    spec = registry.get("tms_get_shipment")
    with pytest.raises(ToolError, match="duplicate"):
        ToolRegistry([spec, spec], registry.base_urls)
    with pytest.raises(ToolError, match="no base URL"):
        ToolRegistry([spec], {"wms": "http://127.0.0.1:1"})


def test_from_services_fails_clearly_when_a_service_is_down():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolCallError, match="tms"):
        ToolRegistry.from_services({"tms": f"http://127.0.0.1:{port}"})


def test_sources_merge_pickle_and_stay_apart(registry: ToolRegistry):
    from opsagent.tools.sources import McpSource

    mcp = ToolSpec(name="pcl_get_parcel", system="parcels", source="mcp", method="MCP", path="get_parcel",
                   description="d", parameters={"type": "object"}, path_params=[], body_params=[], writes=False,
                   reversible=None, inverse=None, supports_dry_run=False)
    parcels = McpSource(name="parcels", transport="stdio", command=["parcels-server"],
                        env_secrets={"PARCELS_TOKEN": {"env": "PARCELS_TOKEN"}})
    merged = registry.merge(ToolRegistry([mcp], sources=[parcels]))
    assert "pcl_get_parcel" in merged and merged.source("parcels") == parcels
    assert merged.base_urls == registry.base_urls  # only OpenAPI systems have one
    clone = pickle.loads(pickle.dumps(merged.subset(["pcl_get_parcel", "tms_get_shipment"])))
    assert clone.names() == ["pcl_get_parcel", "tms_get_shipment"] and clone.source("parcels") == parcels
    with pytest.raises(ToolError, match="is an MCP server, it has no base URL"):
        merged.base_url("parcels")
    with pytest.raises(ToolError, match="two sources for system 'parcels'"):
        merged.merge(ToolRegistry([], sources=[parcels]))
    with pytest.raises(ToolError, match="is an mcp tool but 'tms' is an openapi source"):
        ToolRegistry([mcp.model_copy(update={"system": "tms"})], registry.base_urls)
