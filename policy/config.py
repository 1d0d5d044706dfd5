"""The policy as configuration: which tools each exception class may use, under which limits.

Anything the file does not name is denied: an unknown exception class, a tool not listed for the
class, an argument that a constraint or scope names but the tool does not have, a cross-record
constraint whose record the case has not read.

Cross-record constraints name a value the case has read as `tool.field` (dotted for nested
fields), e.g. `eq_read: wms_get_shipment.scanned_weight_kg`: the field of the last successful
result of that tool in the request's `observations`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsagent.errors import ConfigError
from opsagent.policy.limits import LimitsConfig, SpendPolicy
from opsagent.policy.modes import GateConfig, Mode

Risk = Literal["low", "high"]

_Strict = ConfigDict(extra="forbid", frozen=True)
MAX_POLICY_CHARS = 1_000_000
"""The largest policy text `PolicyConfig.from_text` parses by default."""


class ArgConstraint(BaseModel):
    """Limits on one argument's value, on top of the tool's own JSON schema."""

    model_config = _Strict

    gt: float | None = Field(None, description="The value must be a number > this.")
    ge: float | None = Field(None, description="The value must be a number >= this.")
    lt: float | None = Field(None, description="The value must be a number < this.")
    le: float | None = Field(None, description="The value must be a number <= this.")
    min_length: int | None = Field(None, ge=0, description="The value must be a string at least this long.")
    max_length: int | None = Field(None, ge=0, description="The value must be a string at most this long.")
    pattern: str | None = Field(None, description="The value must be a string the regex fully matches.")
    one_of: list[Any] | None = Field(None, description="The value must equal one of these (1 is not true).")
    eq_read: str | None = Field(None, description="The value must equal this read value (tool.field).")
    gt_read: str | None = Field(None, description="The value must be a number > this read value (tool.field).")
    ge_read: str | None = Field(None, description="The value must be a number >= this read value (tool.field).")
    lt_read: str | None = Field(None, description="The value must be a number < this read value (tool.field).")
    le_read: str | None = Field(None, description="The value must be a number <= this read value (tool.field).")

    @field_validator("eq_read", "gt_read", "ge_read", "lt_read", "le_read")
    @classmethod
    def _is_read_ref(cls, value: str | None) -> str | None:
        if value is not None:
            check_read_ref(value)
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression {value!r}: {err}") from err
        return value

    def violation(self, value: Any) -> str | None:
        """Why `value` breaks this constraint, or None if it satisfies it."""
        for bound, op in ((self.gt, ">"), (self.ge, ">="), (self.lt, "<"), (self.le, "<=")):
            if bound is None:
                continue
            if not _is_number(value) or not _compare(value, op, bound):
                return f"must be {op} {bound:g}, got {value!r}"
        if self.min_length is not None or self.max_length is not None or self.pattern is not None:
            if not isinstance(value, str):
                return f"must be a string, got {type(value).__name__}"
            if self.min_length is not None and len(value) < self.min_length:
                return f"must be at least {self.min_length} characters, got {len(value)}"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters, got {len(value)}"
            if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
                return f"must match {self.pattern!r}, got {value!r}"
        if self.one_of is not None and not any(_same(value, option) for option in self.one_of):
            return f"must be one of {self.one_of!r}, got {value!r}"
        return None

    def read_refs(self) -> list[str]:
        """The read values (tool.field) this constraint compares with."""
        return [ref for ref, _ in self._read_bounds()]

    def read_violation(self, value: Any, observations: dict[str, Any]) -> str | None:
        """Why `value` breaks a cross-record bound given what the case has read, or None.

        Fails closed: a read the case has not made, or a field its result lacks, is a violation.
        """
        for ref, op in self._read_bounds():
            try:
                read = read_value(ref, observations)
            except LookupError as err:
                return f"must {'equal' if op == '==' else 'be ' + op} {ref}, but {err}"
            if op == "==":
                if not _same(value, read):
                    return f"must equal {ref} ({read!r}), got {value!r}"
            elif not _is_number(read):
                return f"must be {op} {ref}, which is not a number ({read!r})"
            elif not _is_number(value) or not _compare(value, op, read):
                return f"must be {op} {ref} ({read:g}), got {value!r}"
        return None

    def _read_bounds(self) -> list[tuple[str, str]]:
        pairs = ((self.eq_read, "=="), (self.gt_read, ">"), (self.ge_read, ">="), (self.lt_read, "<"),
                 (self.le_read, "<="))
        return [(ref, op) for ref, op in pairs if ref is not None]


def check_read_ref(ref: str) -> tuple[str, list[str]]:
    """Split `tool.field[.sub...]` into the tool and the field path; ValueError if malformed."""
    tool, _, path = ref.partition(".")
    parts = path.split(".") if path else []
    if not tool or not parts or not all(parts):
        raise ValueError(f"a read reference is tool.field, got {ref!r}")
    return tool, parts


def read_value(ref: str, observations: dict[str, Any]) -> Any:
    """The value `ref` (tool.field) names in `observations`; LookupError saying what to read first."""
    tool, parts = check_read_ref(ref)
    if observations.get(tool) is None:
        raise LookupError(f"the case has not read {tool} (read {tool} first)")
    value = observations[tool]
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            raise LookupError(f"the result of {tool} has no {'.'.join(parts)}")
        value = value[part]
    return value


class RiskCondition(BaseModel):
    """A condition on one argument that raises a tool's risk to high; all set bounds must hold."""

    model_config = _Strict

    arg: str = Field(description="The argument the condition looks at.")
    above: float | None = Field(None, description="Matches when the value is a number > this.")
    at_least: float | None = Field(None, description="Matches when the value is a number >= this.")
    below: float | None = Field(None, description="Matches when the value is a number < this.")
    at_most: float | None = Field(None, description="Matches when the value is a number <= this.")
    one_of: list[Any] | None = Field(None, description="Matches when the value equals one of these.")

    @model_validator(mode="after")
    def _has_bound(self) -> Self:
        if all(getattr(self, k) is None for k in ("above", "at_least", "below", "at_most", "one_of")):
            raise ValueError(f"high_if on {self.arg!r} needs one of above, at_least, below, at_most, one_of")
        return self

    def matches(self, args: dict[str, Any]) -> str | None:
        """A description of the match, or None if the condition does not hold.

        Fails closed: a missing or non-numeric value under a numeric bound counts as a match.
        """
        if self.arg not in args:
            return f"{self.arg} is missing"
        value = args[self.arg]
        parts = []
        for bound, op in ((self.above, ">"), (self.at_least, ">="), (self.below, "<"), (self.at_most, "<=")):
            if bound is None:
                continue
            if not _is_number(value):
                return f"{self.arg}={value!r} is not a number"
            if not _compare(value, op, bound):
                return None
            parts.append(f"{op} {bound:g}")
        if self.one_of is not None:
            if not any(_same(value, option) for option in self.one_of):
                return None
            parts.append(f"in {self.one_of!r}")
        return f"{self.arg}={value!r} {' and '.join(parts)}"


class ToolPolicy(BaseModel):
    """How one tool may be used for one exception class."""

    model_config = _Strict

    risk: Risk = Field(description="Base risk tier: low runs directly, high needs human approval.")
    high_if: list[RiskCondition] = Field(
        default_factory=list,
        description="Conditions on argument values that raise the risk to high; any one matching is enough.",
    )
    constraints: dict[str, ArgConstraint] = Field(
        default_factory=dict, description="Limits on argument values, keyed by argument name."
    )
    scope: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Arguments bound to the case's entities: argument name -> entity name; the argument's value "
            "must equal that entity of the case. A list of names is shorthand for argument = entity name."
        ),
    )
    reads: dict[str, ArgConstraint] = Field(
        default_factory=dict,
        description="Preconditions on values the case has read: tool.field -> the limits that value must "
        "meet, e.g. {wms_get_shipment.scale_check: {one_of: [passed]}}. A read not made denies.",
    )
    related: dict[str, str] = Field(
        default_factory=dict,
        description="Records the case read must belong to the case: tool.field -> the case's entity it "
        "must equal, e.g. {tkt_get_ticket.entities.invoice_id: invoice_id, erp_get_invoice.shipment_id: "
        "shipment_id}: the ticket is about this invoice, the invoice about this shipment. A read not "
        "made, or a case without that entity, denies.",
    )
    spend: SpendPolicy | None = Field(
        None, description="The tool moves money: the argument carrying the amount and the spend limits."
    )
    calls_per_minute: int | None = Field(
        None, ge=0,
        description="The most calls to this tool the cluster may be allowed per minute for this class.",
    )
    note: str = Field("", description="Why the tool has this tier (for reviewers; not evaluated).")

    @field_validator("reads", "related")
    @classmethod
    def _reads_are_refs(cls, value: dict[str, ArgConstraint]) -> dict[str, ArgConstraint]:
        for ref in value:
            check_read_ref(ref)
        return value

    @field_validator("scope", mode="before")
    @classmethod
    def _scope_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {name: name for name in value}
        return value

    def named_args(self) -> set[str]:
        """Every argument name this entry refers to."""
        spend = {self.spend.arg, self.spend.currency_arg} - {None} if self.spend else set()
        if self.spend is not None and self.spend.per_entity is not None:
            spend.add(self.spend.per_entity.arg)
        return set(self.constraints) | set(self.scope) | {c.arg for c in self.high_if} | spend

    def read_refs(self) -> set[str]:
        """Every read value (tool.field) this entry compares with."""
        refs = set(self.reads) | set(self.related)
        for constraint in [*self.constraints.values(), *self.reads.values()]:
            refs.update(constraint.read_refs())
        return refs


class ClassPolicy(BaseModel):
    """The tools one exception class may use."""

    model_config = _Strict

    description: str = Field("", description="What this exception class is (for reviewers).")
    tools: dict[str, ToolPolicy] = Field(
        description="The allowlist: tool name -> how it may be used. Tools not listed are denied."
    )
    calls_per_minute: int | None = Field(
        None, ge=0, description="The most tool calls the cluster may be allowed per minute for this class."
    )
    initial_mode: Mode = Field(
        Mode.shadow,
        description="The autonomy mode the class starts in, recorded when the policy first lists it: "
        "shadow (writes proposed and dry-run only), supervised (every write needs approval) or "
        "autonomous (low-risk writes run). Later changes are an admin's (`opsagent autonomy set`).",
    )
    gates: GateConfig | None = Field(
        None, description="This class's promotion and demotion gates (None: the policy's `gates`)."
    )
    separation_of_duties: bool = Field(
        True, description="The approver of a held action may not be anyone who submitted the case's "
        "exception (by identity name: an admin token does not bypass it).")
    min_confidence: float | None = Field(
        None, gt=0.0, le=1.0,
        description="In autonomous mode, a write whose planner confidence (the model's probability "
        "of choosing that tool, agents/confidence.py) is below this, or unknown, needs a human's "
        "approval: the model proposes, a person decides what it was unsure of. None: no such hold.",
    )


class PolicyConfig(BaseModel):
    """The whole policy: exception classes and their allowlisted tools. Unlisted = denied."""

    model_config = _Strict

    name: str = Field("default", description="A label for the policy, shown in decisions' reasons.")
    classes: dict[str, ClassPolicy] = Field(
        description="Exception class -> its policy. An exception class not listed is denied everything."
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="Cluster-wide spend and rate limits, the currency of all spend limits, permit lifetime.",
    )
    gates: GateConfig = Field(
        default_factory=GateConfig,
        description="When a class is eligible for its next autonomy stage and when it is demoted "
        "(cases needed, Wilson threshold and confidence, demotion window); per class in `classes.*.gates`.",
    )

    def gates_for(self, exception_type: str) -> GateConfig:
        """The gates of one class: its own, else the policy's."""
        class_policy = self.classes.get(exception_type)
        return class_policy.gates if class_policy is not None and class_policy.gates else self.gates

    @property
    def version(self) -> str:
        """A short sha256 digest of the policy content (comments and key order do not count)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @classmethod
    def from_yaml(cls, source: str | Path) -> PolicyConfig:
        """Load from a YAML file path or YAML text (trusted callers: the CLI, the system's config);
        raises ConfigError with the cause. Text from a request goes to `from_text`, never here."""
        if isinstance(source, Path) or ("\n" not in source and _looks_like_path(source)):
            path = Path(source)
            try:
                text = path.read_text()
            except OSError as err:
                raise ConfigError(f"cannot read policy file {path}: {err}") from err
            return cls.from_text(text, where=str(path), max_chars=None)
        return cls.from_text(source, max_chars=None)

    @classmethod
    def from_text(cls, text: str, *, where: str = "<policy text>",
                  max_chars: int | None = MAX_POLICY_CHARS) -> PolicyConfig:
        """Parse policy YAML text; never reads a file, whatever the text looks like. Refuses text
        over `max_chars` and YAML anchors and aliases (an alias bomb grows without bound)."""
        if not isinstance(text, str):
            raise ConfigError(f"{where}: a policy is YAML text, got {type(text).__name__}")
        if max_chars is not None and len(text) > max_chars:
            raise ConfigError(f"{where}: {len(text)} characters exceed the limit of {max_chars}")
        try:
            data = _load_plain_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError.invalid(f"{where}: invalid policy", err) from err


def _load_plain_yaml(text: str) -> Any:
    """`yaml.safe_load`, after checking the text uses no anchor, alias or merge key."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML anchors and aliases are not allowed in a policy")
    return yaml.safe_load(text)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint with its line, without echoing the text around it."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)
    return str(err).splitlines()[0][:200]


def load_default_policy() -> PolicyConfig:
    """The policy shipped with opsagent (`policy/default.yaml`)."""
    text = importlib.resources.files("opsagent.policy").joinpath("default.yaml").read_text()
    return PolicyConfig.from_yaml(text)


def _looks_like_path(text: str) -> bool:
    if text.strip().endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


def _compare(value: float, op: str, bound: float) -> bool:
    return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]


def _same(value: Any, option: Any) -> bool:
    """Equality that keeps booleans apart from numbers (`True == 1` in Python)."""
    if _is_number(value) and _is_number(option):
        return value == option
    return type(value) is type(option) and value == option
