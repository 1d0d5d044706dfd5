"""Typed trace records, one class per table, and their Arrow schema derived from the fields.

Column types follow the field types: str -> string, int -> int64, float -> float64,
bool -> bool, datetime -> timestamp[us, UTC]; dict, list and Any fields are stored as JSON text.
Every record carries a unique `event_id`; every row and file carries `SCHEMA_VERSION`
(the `schema_version` column and the `opsagent.schema_version` file metadata).
The tables, their columns and the rules for changing them are in SCHEMA.md next to this file.
"""

from __future__ import annotations

import json
import types
import typing
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are rejected."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    """A fresh random event id (32 hex digits)."""
    return uuid.uuid4().hex


SCHEMA_VERSION = 8
"""Version of the trace schema: 1 had no `event_id` and no `schema_version`, 2 no `actions.limits`,
3 no `planner_calls.prompt`, 4 no autonomy modes (`actions.autonomy_mode`, `case_events.outcome`,
the `verdicts` table), 5 no `planner_calls.confidence`, 6 no `planner_calls.decided_by` and
`planner_calls.candidates`, 7 no `planner_calls.withheld`; see SCHEMA.md."""


class TraceEvent(BaseModel):
    """Base of every trace record: `table` names its table, `partition_by` its main timestamp.

    `event_id` identifies the record: a duplicate delivery has the same id and readers keep one.
    A `model_copy` is a new record, so it gets a new id unless `update` names one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: ClassVar[str]
    partition_by: ClassVar[str]

    event_id: str = Field(default_factory=new_event_id, description="Unique id of this record.")

    def to_row(self) -> dict[str, Any]:
        """The record as one Arrow row: JSON fields as text, None stays null, plus `schema_version`."""
        row = {}
        json_fields = _json_fields(type(self))
        for name in type(self).model_fields:
            value = getattr(self, name)
            row[name] = _to_json(value) if name in json_fields and value is not None else value
        row["schema_version"] = SCHEMA_VERSION
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> typing.Self:
        """Rebuild a record from a stored row. Extra columns (the partition, `schema_version`) are
        ignored; a column missing or null in an older file takes the field's default."""
        json_fields = _json_fields(cls)
        values = {}
        for name, info in cls.model_fields.items():
            value = row.get(name)
            if value is None and (info.default_factory is not None or name not in row):
                continue
            values[name] = json.loads(value) if name in json_fields and value is not None else value
        return cls.model_validate(values)

    def model_copy(self, *, update: typing.Mapping[str, Any] | None = None, deep: bool = False) -> typing.Self:
        """A copy as a new record: a fresh `event_id` unless `update` sets one."""
        return super().model_copy(update={"event_id": new_event_id(), **(update or {})}, deep=deep)

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """The table's fixed Arrow schema, derived once from the fields."""
        return _arrow_schema(cls)

    def partition_date(self) -> str:
        """YYYY-MM-DD (UTC) of the record's main timestamp: the `date=` partition it is written to."""
        return getattr(self, self.partition_by).date().isoformat()


CaseStatus = Literal["received", "planning", "executing", "awaiting_approval", "resolved", "escalated", "failed",
                     "proposed"]
AutonomyMode = Literal["shadow", "supervised", "autonomous"]


class CaseEvent(TraceEvent):
    """A case changed status."""

    table: ClassVar[str] = "case_events"
    partition_by: ClassVar[str] = "recorded_at"

    case_id: str = Field(description="The case.")
    exception_type: str = Field(description="The exception class, e.g. weight_mismatch.")
    status: CaseStatus = Field(description="The case's status from now on.")
    description: str = Field(description="The exception as reported.")
    entities: dict[str, str] = Field(description="Entities the case names (stored as JSON).")
    reason: str | None = Field(None, description="Why the status changed (escalations, failures).")
    received_at: UtcDatetime = Field(description="When the exception was received.")
    finished_at: UtcDatetime | None = Field(None, description="When the case reached a final status.")
    recorded_at: UtcDatetime = Field(default_factory=utcnow, description="When this event was recorded.")
    outcome: Literal["resolved", "escalated"] | None = Field(
        None,
        description="For a case ended `proposed` (shadow mode, nothing written): the outcome the agent proposed.")


class ActionEvent(TraceEvent):
    """One tool call the planner proposed: the policy's decision and, if run, its outcome."""

    table: ClassVar[str] = "actions"
    partition_by: ClassVar[str] = "started_at"

    case_id: str = Field(description="The case.")
    step: int = Field(description="The planner step that proposed the call.")
    tool: str = Field(description="The tool name.")
    args: dict[str, Any] = Field(description="The tool's arguments (stored as JSON).")
    risk: str | None = Field(description="The policy's risk tier; None when denied before it was known.")
    decision: Literal["allow", "require_approval", "deny", "propose"] = Field(
        description="The policy's verdict (propose: shadow mode, dry-run only).")
    reasons: list[str] = Field(description="The policy's reasons, deciding one first (stored as JSON).")
    limits: list[Any] = Field(
        default_factory=list,
        description="Limits the policy consulted: what, value, limit, exceeded (stored as JSON).",
    )
    writes: bool = Field(description="Whether the tool changes state in a system of record.")
    executed: bool = Field(description="Whether the call was sent to the system of record.")
    dry_run: bool = Field(description="Whether it was sent as a dry run.")
    result: Any = Field(None, description="The system's response (stored as JSON).")
    error: str | None = Field(None, description="The error, if the call failed.")
    started_at: UtcDatetime = Field(description="When the action was proposed.")
    finished_at: UtcDatetime | None = Field(None, description="When the call returned.")
    policy_version: str = Field(description="The policy version that decided.")
    args_digest: str = Field(description="sha256 of the canonical JSON of {tool, args}.")
    autonomy_mode: AutonomyMode | None = Field(
        None, description="The class's autonomy mode the policy decided in (shadow, supervised, autonomous).")


class PlannerCallEvent(TraceEvent):
    """One call to the planner model."""

    table: ClassVar[str] = "planner_calls"
    partition_by: ClassVar[str] = "started_at"

    case_id: str = Field(description="The case.")
    step: int = Field(description="The planner step.")
    model: str = Field(description="The model name.")
    prompt_digest: str = Field(description="sha256 of the prompt.")
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    output: str = Field(description="The raw model output.")
    finish_reason: str | None = Field(description="Why generation stopped (stop, length, ...).")
    started_at: UtcDatetime = Field(description="When the call started.")
    finished_at: UtcDatetime = Field(description="When the call finished.")
    duration_ms: float = Field(description="Wall-clock duration in milliseconds.")
    prompt: list[dict[str, Any]] | None = Field(
        None, description="The chat messages the model was given ({role, content} each).")
    confidence: float | None = Field(
        None, description="The model's probability of the step's decision: among the step's "
        "candidates (choice decoding), or of the tokens spelling the tool and finish status (schema "
        "decoding); None when the engine gives none.")
    decided_by: str | None = Field(
        None, description="model: the engine chose; rule: the playbook left one step, no call was "
        "made (then model is `rule`, tokens 0). Null before schema version 7.")
    candidates: list[dict[str, Any]] | None = Field(
        None, description="Every candidate of the step with the model's probability "
        "([{decision, probability}]; choice decoding; stored as JSON).")
    withheld: list[dict[str, Any]] | None = Field(
        None, description="Steps the playbook's SOP rules kept from the choice, with the rule's "
        "name ([{decision, rule}]; stored as JSON); with decided_by = rule and one candidate "
        "left, these rules decided. Null before schema version 8.")


class ApprovalEvent(TraceEvent):
    """An approval request or its decision; the latest row per approval_id is its state."""

    table: ClassVar[str] = "approvals"
    partition_by: ClassVar[str] = "recorded_at"

    approval_id: str = Field(description="The approval's id.")
    case_id: str = Field(description="The case.")
    step: int = Field(description="The planner step of the action.")
    tool: str = Field(description="The tool name.")
    args: dict[str, Any] = Field(description="The exact arguments to approve (stored as JSON).")
    args_digest: str = Field(description="sha256 of the canonical JSON of {tool, args}; binds the approval.")
    status: Literal["pending", "approved", "rejected", "expired"] = Field(description="The approval's state.")
    risk: str | None = Field(None, description="The policy's risk tier of the action.")
    preview: Any = Field(None, description="The dry-run diff the approver was shown (stored as JSON).")
    policy_version: str | None = Field(None, description="The policy version that held the action.")
    requested_at: UtcDatetime = Field(description="When approval was requested.")
    decided_at: UtcDatetime | None = Field(None, description="When it was decided.")
    approver: str | None = Field(None, description="Who decided (from authentication).")
    reason: str | None = Field(None, description="The approver's reason.")
    recorded_at: UtcDatetime = Field(default_factory=utcnow, description="When this row was recorded.")


class VerdictEvent(TraceEvent):
    """Whether a case was handled correctly: evidence for its class's autonomy gates (policy/gates.py).
    The latest verdict per case counts."""

    table: ClassVar[str] = "verdicts"
    partition_by: ClassVar[str] = "recorded_at"

    case_id: str = Field(description="The case judged.")
    exception_type: str = Field(description="The case's exception class.")
    autonomy_mode: AutonomyMode | None = Field(description="The autonomy mode the case ran in.")
    source: Literal["human_log", "review"] = Field(
        description="human_log: the agent's writes and outcome compared with what ops did; "
        "review: an operator's verdict.")
    correct: bool = Field(description="True if the case agrees with the human log / was reviewed correct.")
    reason: str = Field(description="Why: the first difference found, or the reviewer's reason.")
    actor: str = Field(description="Who recorded it: opsagent-compare, or the reviewer (from authentication).")
    details: dict[str, Any] | None = Field(
        None, description="What was compared: the agent's and the human's writes and outcomes (stored as JSON).")
    case_received_at: UtcDatetime | None = Field(None, description="When the case was received.")
    recorded_at: UtcDatetime = Field(default_factory=utcnow, description="When the verdict was recorded.")


RECORD_TYPES: tuple[type[TraceEvent], ...] = (
    CaseEvent, ActionEvent, PlannerCallEvent, ApprovalEvent, VerdictEvent)
"""Every table, in a stable order."""

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def _column_type(annotation: Any) -> tuple[pa.DataType | None, bool]:
    """(Arrow type, nullable) for a field annotation; None as the type means JSON text."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _column_type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _column_type(members[0]) if len(members) == 1 else (None, True)
        return inner, True
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        return (_SCALARS[kinds.pop()] if len(kinds) == 1 else None), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    return None, True  # dict, list, Any, nested models: JSON text


@cache
def _json_fields(cls: type[TraceEvent]) -> frozenset[str]:
    return frozenset(n for n, f in cls.model_fields.items() if _column_type(f.annotation)[0] is None)


@cache
def _arrow_schema(cls: type[TraceEvent]) -> pa.Schema:
    fields = []
    for name, info in cls.model_fields.items():
        arrow_type, nullable = _column_type(info.annotation)
        fields.append(pa.field(name, arrow_type or pa.string(), nullable=nullable or arrow_type is None))
    fields.append(pa.field("schema_version", pa.int64(), nullable=False))
    metadata = {"opsagent.table": cls.table, "opsagent.schema_version": str(SCHEMA_VERSION)}
    return pa.schema(fields, metadata=metadata)


def _to_json(value: Any) -> str:
    return json.dumps(to_jsonable_python(value, fallback=repr), sort_keys=True, ensure_ascii=False)
