"""Tools: the tool model, the registry built from OpenAPI documents, and HTTP invocation."""

from opsagent.tools.http import call_tool
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult, ToolSpec, argument_errors

__all__ = ["ToolRegistry", "ToolResult", "ToolSpec", "argument_errors", "call_tool", "tools_from_openapi"]
