"""Tool sources: where a registry's tools come from and how each is called.

A source is one system of record: an OpenAPI service (HTTP) or an MCP server (stdio or
streamable HTTP). Its config is YAML, written by `opsagent tools import openapi` or by hand;
it names where secrets come from, never their values. One file holds one source, or several
under `sources:`.

```yaml
kind: openapi
name: billing                      # the system name tools are registered under
base_url: https://erp.example/api
spec: billing.openapi.json         # a file (relative to this one) or URL; or `document:` embedded
auth: [{header: Authorization, scheme: Bearer, env: ERP_TOKEN}]   # or secret: <secrets-file key>
timeout_s: 10
retries: 2                         # reads always; writes only with an idempotency key
operations: {erp_search_invoices: {writes: false}, erp_purge: {exclude: true}}
---
kind: mcp
name: docs
transport: stdio                   # or http, with url: and auth:
command: [python, -m, docs_server]
env_secrets: {DOCS_TOKEN: {secret: docs_token}}
prefix: docs_
tools: {docs_reindex: {writes: true}}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from opsagent.errors import ConfigError
from opsagent.tools.secrets import SecretRef, Secrets

_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
_Strict = ConfigDict(extra="forbid", frozen=True)


class AuthHeader(SecretRef):
    """A header attached to every call at call time, its value from a secret."""

    header: str = Field("Authorization", description="The header's name.")
    scheme: str | None = Field(None, description="Put before the value with a space, e.g. Bearer.")

    def value(self, secrets: Secrets) -> str:
        """The header's value (SecretError if the secret cannot be had)."""
        secret = secrets.get(SecretRef(env=self.env, secret=self.secret))
        return f"{self.scheme} {secret}" if self.scheme else secret


def auth_headers(auth: list[AuthHeader], secrets: Secrets) -> dict[str, str]:
    """The headers of a source's `auth` list (SecretError if one cannot be had)."""
    return {a.header: a.value(secrets) for a in auth}


class OperationOverride(BaseModel):
    """A correction to one imported operation, applied as the matching OpenAPI extension."""

    model_config = _Strict

    writes: bool | None = Field(None, description="Force read (false) or write (true): x-opsagent-writes.")
    exclude: bool = Field(False, description="Leave the operation out of the registry: x-opsagent-internal.")
    description: str | None = Field(None, description="Replace the tool description the planner is shown.")


class OpenAPISource(BaseModel):
    """An HTTP service described by an OpenAPI 3 document: one tool per operation."""

    model_config = _Strict

    kind: Literal["openapi"] = "openapi"
    name: str = Field(pattern=_NAME, description="The system name its tools are registered under.")
    base_url: str = Field(pattern=r"^https?://", description="Where calls go (paths are appended).")
    spec: str | None = Field(None, description="Where the document is: a file path (relative to the "
                             "source file) or an http(s) URL. Neither spec nor document: "
                             "{base_url}/openapi.json.")
    document: dict[str, Any] | None = Field(None, description="The OpenAPI document itself, embedded.")
    auth: list[AuthHeader] = Field(default_factory=list, description="Headers attached at call time.")
    timeout_s: float | None = Field(None, gt=0, description="Seconds per request (default: the executor's).")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts after a transport failure or a "
                         "429/500/502/503/504: reads and dry runs always, writes only with an idempotency key.")
    backoff_s: float = Field(0.2, ge=0, le=30, description="Wait before the first retry; doubles each time.")
    operations: dict[str, OperationOverride] = Field(
        default_factory=dict, description="Per operationId: corrections to what the document says.")

    @model_validator(mode="after")
    def _one_document(self) -> Self:
        if self.spec is not None and self.document is not None:
            raise ValueError("give spec (a location) or document (embedded), not both")
        return self

    def secret_refs(self) -> list[SecretRef]:
        return list(self.auth)


class McpToolOverride(BaseModel):
    """A correction to one MCP tool."""

    model_config = _Strict

    writes: bool | None = Field(None, description="Force read (false) or write (true), whatever the "
                                "tool's annotations say.")
    exclude: bool = Field(False, description="Leave the tool out of the registry.")


class McpSource(BaseModel):
    """An MCP server: its tools, listed over stdio or streamable HTTP."""

    model_config = _Strict

    kind: Literal["mcp"] = "mcp"
    name: str = Field(pattern=_NAME, description="The system name its tools are registered under.")
    transport: Literal["stdio", "http"] = Field(description="stdio: start `command`; http: connect to `url`.")
    command: list[str] | None = Field(None, min_length=1, description="stdio: the program and its arguments.")
    cwd: str | None = Field(None, description="stdio: the server's working folder.")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: extra environment variables "
                                "(not secret; secrets go in env_secrets).")
    env_secrets: dict[str, SecretRef] = Field(
        default_factory=dict, description="stdio: environment variables the server gets from secrets.")
    url: str | None = Field(None, pattern=r"^https?://", description="http: the server's MCP endpoint.")
    auth: list[AuthHeader] = Field(default_factory=list, description="http: headers attached at call time.")
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_]*$",
                        description="Put before each tool's name in the registry (avoids clashes).")
    timeout_s: float | None = Field(None, gt=0, description="Seconds per call (default: the executor's).")
    retries: int = Field(1, ge=0, le=10, description="Extra attempts of a read whose call failed at the "
                         "transport level. Writes are never retried.")
    idempotent_meta: bool = Field(
        False, description="The server applies a write carrying the same `_meta` idempotency key "
        "(io.opsagent/idempotency-key) once. Without this, and without an `idempotency_key` "
        "argument of its own, an MCP write cannot be made idempotent and is high risk.")
    tools: dict[str, McpToolOverride] = Field(
        default_factory=dict, description="Per tool name on the server: corrections.")

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio MCP source needs command")
            if self.url or self.auth:
                raise ValueError("url and auth are for http MCP sources")
        else:
            if not self.url:
                raise ValueError("an http MCP source needs url")
            if self.command or self.env or self.env_secrets or self.cwd:
                raise ValueError("command, cwd, env and env_secrets are for stdio MCP sources")
        return self

    def secret_refs(self) -> list[SecretRef]:
        return [*self.auth, *self.env_secrets.values()]


ToolSource = Annotated[OpenAPISource | McpSource, Field(discriminator="kind")]
_SOURCES = TypeAdapter(list[ToolSource])


def load_sources(path: Path | str) -> list[OpenAPISource | McpSource]:
    """The sources in a YAML file (one source, several YAML documents, or `sources: [...]`);
    ConfigError with the cause. A relative `spec` path is made relative to the file."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as err:
        raise ConfigError(f"cannot read tool source file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    items: list[Any] = []
    for doc in docs:
        items += doc["sources"] if isinstance(doc, dict) and set(doc) == {"sources"} else [doc]
    if not items:
        raise ConfigError(f"{path}: no tool source in the file")
    try:
        sources = _SOURCES.validate_python(items)
    except ValidationError as err:
        raise ConfigError.invalid(f"{path}: invalid tool source", err) from err
    return [_anchor(s, path.parent) for s in sources]


def dump_source(source: OpenAPISource | McpSource) -> str:
    """The source as YAML for a reviewer: every setting spelled out, overrides only as set, an
    embedded document last (what `load_sources` reads back)."""
    data = source.model_dump(mode="json", exclude_none=True)
    overrides = source.operations if isinstance(source, OpenAPISource) else source.tools
    key = "operations" if isinstance(source, OpenAPISource) else "tools"
    data[key] = {name: o.model_dump(mode="json", exclude_defaults=True) for name, o in overrides.items()}
    if "document" in data:
        data["document"] = data.pop("document")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _anchor(source: OpenAPISource | McpSource, folder: Path) -> OpenAPISource | McpSource:
    if isinstance(source, OpenAPISource) and source.spec and "://" not in source.spec:
        return source.model_copy(update={"spec": str((folder / source.spec).resolve())})
    return source
