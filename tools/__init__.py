"""Tools: the tool model, the registry and its sources (OpenAPI services, MCP servers), the
OpenAPI import, HTTP invocation, secrets and their redaction."""

from opsagent.tools.http import call_tool
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.sources import AuthHeader, McpSource, OpenAPISource, load_sources
from opsagent.tools.spec import ToolResult, ToolSpec, argument_errors

__all__ = [
    "AuthHeader", "McpSource", "OpenAPISource", "ToolRegistry", "ToolResult", "ToolSpec", "argument_errors",
    "call_tool", "load_sources", "tools_from_openapi",
]
