"""Autonomy modes and their records: the stages a class moves through, the gates' thresholds
(`GateConfig`, part of the policy file), a mode change and a class's mode now. The durable store
of modes: `policy/autonomy.py`; the gates' rule: `policy/gates.py`."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Mode(StrEnum):
    shadow = "shadow"
    supervised = "supervised"
    autonomous = "autonomous"

    @property
    def rank(self) -> int:
        """0 shadow, 1 supervised, 2 autonomous: more autonomy, higher rank."""
        return _ORDER.index(self)

    @property
    def next(self) -> Mode | None:
        """The stage after this one (None for autonomous)."""
        return _ORDER[self.rank + 1] if self.rank + 1 < len(_ORDER) else None

    @property
    def previous(self) -> Mode | None:
        """The stage a demotion goes to (None for shadow)."""
        return _ORDER[self.rank - 1] if self.rank > 0 else None


_ORDER = [Mode.shadow, Mode.supervised, Mode.autonomous]
FAIL_CLOSED = Mode.supervised
"""The mode of a class whose mode cannot be known: every write waits for a human."""


class ModeSource(Protocol):
    """Where a policy engine reads a class's mode: an `AutonomyStore`, or (what-if) the recorded one."""

    def mode(self, exception_type: str, initial: Mode | str | None = None) -> Mode: ...


class GateConfig(BaseModel):
    """When a class may move up a stage, and when it is moved down (see policy/gates.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cases: int = Field(200, ge=1, description="Cases with a verdict needed in the current stage "
                           "before the class can be eligible for the next one.")
    threshold: float = Field(0.85, gt=0, lt=1, description="The Wilson lower bound of the stage's "
                             "correctness must be at least this for promotion; the class is demoted when "
                             "the upper bound over its recent cases falls below it.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the Wilson score interval.")
    demote_window: int = Field(50, ge=1, description="Demotion looks at the class's most recent this many "
                               "cases with a verdict in its current stage.")
    demote_min_cases: int = Field(20, ge=1, description="No demotion before the window holds this many cases "
                                  "(one wrong verdict is not a trend).")

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> Self:
        if self.demote_min_cases > self.demote_window:
            raise ValueError(f"demote_min_cases ({self.demote_min_cases}) cannot exceed demote_window "
                             f"({self.demote_window})")
        return self


class ModeChange(BaseModel, frozen=True):
    """One row of a class's mode history."""

    exception_type: str = Field(description="The exception class.")
    from_mode: Mode | None = Field(description="The mode before; None for the class's first mode.")
    to_mode: Mode = Field(description="The mode from now on.")
    actor: str = Field(description="Who changed it (from authentication), or opsagent-gates / opsagent-policy.")
    reason: str = Field(description="Why.")
    at: datetime = Field(description="When (UTC).")
    automatic: bool = Field(description="True for a demotion by the gates or the first mode from the policy.")


class ClassMode(BaseModel, frozen=True):
    """A class's mode now, where it came from, and its last change."""

    exception_type: str
    mode: Mode
    initial_mode: Mode | None = Field(description="The policy's initial mode (None: the class is not in it).")
    since: datetime | None = Field(description="When the class entered its mode (None: never recorded).")
    last_change: ModeChange | None
