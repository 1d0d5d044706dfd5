"""Derive `ToolSpec`s from an OpenAPI 3 document: one per operation with an operationId."""

from __future__ import annotations

import copy
from typing import Any

from opsagent.errors import ToolError
from opsagent.tools.spec import ToolSpec

_METHODS = ("get", "post", "put", "patch", "delete")
# Transport controls handled by `call_tool`, never tool arguments.
_CONTROL = {("query", "dry_run"), ("header", "idempotency-key")}
# Schema keywords whose value is a map of name -> schema, not a schema itself.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def tools_from_openapi(doc: dict, system: str, *, skipped: dict[str, str] | None = None) -> list[ToolSpec]:
    """Every operation with an operationId that is not marked `x-opsagent-internal`.

    An operation opsagent cannot call (a header or cookie parameter, a body that is not a JSON
    object) raises ToolError, or, when `skipped` is given, is left out and recorded there
    (operationId -> why).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise ToolError(f"the {system} document is not an OpenAPI document (no `paths` mapping)")
    specs: list[ToolSpec] = []
    for path, item in doc.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if not op or not op.get("operationId") or op.get("x-opsagent-internal"):
                continue
            try:
                specs.append(_spec(doc, system, method, path, op, shared))
            except ToolError as exc:
                if skipped is None:
                    raise
                skipped[op["operationId"]] = str(exc)
    names = [s.name for s in specs]
    if len(names) != len(set(names)):
        raise ToolError(f"duplicate operationIds in the {system} OpenAPI document")
    return specs


def _spec(doc: dict, system: str, method: str, path: str, op: dict, shared: list) -> ToolSpec:
    name = op["operationId"]
    props: dict[str, Any] = {}
    required: list[str] = []
    path_params: list[str] = []
    query_params: list[str] = []
    dry_run = False
    for param in [_resolve(doc, p) for p in [*shared, *op.get("parameters", [])]]:
        where, pname = param.get("in"), param.get("name", "")
        if (where, pname.lower()) in _CONTROL:
            dry_run = dry_run or where == "query"
            continue
        if where not in ("path", "query"):
            raise ToolError(f"{name}: {where} parameter {pname!r} is not supported (path, query and JSON "
                            "body only)")
        schema = _clean(doc, param.get("schema", {"type": "string"}))
        if "description" in param:
            schema.setdefault("description", param["description"])
        if pname in props:
            raise ToolError(f"{name}: parameter {pname!r} appears twice")
        props[pname] = schema
        if where == "path" or param.get("required"):
            required.append(pname)
        (path_params if where == "path" else query_params).append(pname)
    body_params: list[str] = []
    body = op.get("requestBody")
    if body:
        body = _resolve(doc, body)
        content = body.get("content", {})
        if "application/json" not in content:
            raise ToolError(f"{name}: only application/json request bodies are supported")
        schema = _clean(doc, content["application/json"].get("schema", {}))
        if schema.get("type") != "object":
            raise ToolError(f"{name}: the request body must be a JSON object")
        for field, field_schema in schema.get("properties", {}).items():
            if field in props:
                raise ToolError(f"{name}: body field {field!r} collides with a path or query parameter")
            props[field] = field_schema
            body_params.append(field)
        required += [f for f in schema.get("required", []) if f in body_params]
    writes = bool(op.get("x-opsagent-writes", method != "get"))
    return ToolSpec(
        name=name,
        system=system,
        method=method.upper(),
        path=path,
        description="\n\n".join(p for p in (op.get("summary"), op.get("description")) if p) or name,
        parameters={
            "type": "object", "properties": props, "required": required, "additionalProperties": False
        },
        path_params=path_params,
        body_params=body_params,
        query_params=query_params,
        writes=writes,
        reversible=op.get("x-opsagent-reversible") if writes else None,
        inverse=op.get("x-opsagent-inverse"),
        supports_dry_run=bool(op.get("x-opsagent-dry-run", dry_run)),
    )


def _resolve(doc: dict, node: Any, seen: tuple[str, ...] = ()) -> Any:
    """Follow a local `$ref` (possibly chained) to its target."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ToolError(f"unsupported or cyclic $ref {ref!r}")
        seen = (*seen, ref)
        target: Any = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ToolError(f"unresolvable $ref {ref!r}")
            target = target[part]
        node = target
    return node


def _clean(doc: dict, schema: Any, seen: tuple[str, ...] = ()) -> Any:
    """A copy of `schema` with every $ref inlined and `title` keywords dropped."""
    if isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            raise ToolError(f"recursive schema {ref!r} cannot be inlined")
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return _clean(doc, {**_resolve(doc, {"$ref": ref}), **extra}, (*seen, ref))
    if isinstance(schema, list):
        return [_clean(doc, s, seen) for s in schema]
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _clean(doc, v, seen) for k, v in value.items()}
        elif key in ("default", "examples", "example", "const", "enum"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _clean(doc, value, seen)
    return out


def apply_overrides(doc: dict, overrides: dict[str, dict[str, Any]], system: str) -> dict:
    """A copy of `doc` with per-operation overrides written as the extensions the conversion reads:
    `writes` -> x-opsagent-writes, `exclude` -> x-opsagent-internal, `description` replaces the
    summary and description. ToolError for an operationId the document does not have."""
    doc = copy.deepcopy(doc)
    ops = {op.get("operationId"): op for item in doc.get("paths", {}).values() if isinstance(item, dict)
           for method, op in item.items() if method in _METHODS and isinstance(op, dict)}
    unknown = sorted(set(overrides) - set(ops))
    if unknown:
        raise ToolError(f"{system}: overrides name operations the document does not have: {', '.join(unknown)}")
    for op_id, override in overrides.items():
        op = ops[op_id]
        if override.get("writes") is not None:
            op["x-opsagent-writes"] = bool(override["writes"])
        if override.get("exclude"):
            op["x-opsagent-internal"] = True
        if override.get("description"):
            op.pop("summary", None)
            op["description"] = override["description"]
    return doc
