"""`opsagent tools import openapi`: turn an OpenAPI document into a reviewed tool-source config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from opsagent.errors import ConfigError, SecretError, ToolError
from opsagent.tools.building import openapi_tools, read_document
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import AuthHeader, OpenAPISource, OperationOverride, auth_headers
from opsagent.tools.spec import ToolSpec


class Imported(BaseModel):
    """What an import produced: the source config, its tools, and the operations left out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    source: OpenAPISource
    tools: list[ToolSpec]
    skipped: dict[str, str]


def import_openapi(
    spec: str, name: str, base_url: str, *, auth: Sequence[AuthHeader] = (), timeout_s: float | None = None,
    retries: int = 2, embed: bool = True, reads: Sequence[str] = (), writes: Sequence[str] = (),
    exclude: Sequence[str] = (), secrets: Secrets | None = None,
) -> Imported:
    """Read the document at `spec` (file or URL) and describe it as a source of tools.

    `embed` pins the document into the config (what the policy was reviewed against); otherwise
    the config keeps its location (a file path made absolute) and re-reads it at each build.
    `reads`/`writes`/`exclude` are operationIds to mark read, write or leave out; operations
    opsagent cannot call are left out and reported. ToolError/ConfigError with the cause.
    """
    both = sorted(set(reads) & set(writes))
    if both:
        raise ConfigError(f"marked both read and write: {', '.join(both)}")
    headers = None
    if auth and spec.startswith(base_url.rstrip("/") + "/"):
        try:
            headers = auth_headers(list(auth), secrets or Secrets())
        except SecretError:
            headers = None
    doc = read_document(spec, headers=headers, timeout=timeout_s or 10.0)
    skipped: dict[str, str] = {}
    tools_from_openapi(doc, name, skipped=skipped)
    overrides: dict[str, OperationOverride] = {op: OperationOverride(exclude=True) for op in skipped}
    for ops, field in ((reads, {"writes": False}), (writes, {"writes": True}), (exclude, {"exclude": True})):
        for op in ops:
            current = overrides.get(op, OperationOverride()).model_dump(exclude_defaults=True)
            overrides[op] = OperationOverride(**{**current, **field})
    location = spec if "://" in spec else str(Path(spec).resolve())
    try:
        source = OpenAPISource(
            name=name, base_url=base_url.rstrip("/"), spec=None if embed else location,
            document=doc if embed else None, auth=list(auth), timeout_s=timeout_s, retries=retries,
            operations=overrides,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'source'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid tool source: {problems}") from err
    tools = openapi_tools(source, doc=doc)
    if not tools:
        raise ToolError(f"{spec}: no operation opsagent can call (each needs an operationId)")
    return Imported(source=source, tools=tools, skipped=skipped)
