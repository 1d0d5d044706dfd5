"""Every error opsagent raises, split by cause.

Control flow is not an error: a high-risk action that needs approval is a `PolicyDecision`
with verdict `require_approval`, never an exception.
"""

from __future__ import annotations

from typing import Any


class OpsAgentError(Exception):
    """Base class of every opsagent error."""


class ConfigError(OpsAgentError):
    """A configuration file or value is invalid (bad YAML, unknown field, missing model)."""

    @classmethod
    def invalid(cls, where: str, err: Any, section: str = "") -> ConfigError:
        """`err` (a pydantic ValidationError) as one error, its problems joined by "; ", an
        unknown key named with its section, e.g. `unknown key 'tensor_parallel_size' in
        planner.vllm`. `section`: where the validated value sits in the file, if not at its top."""
        problems = []
        for e in err.errors():
            loc = [*filter(None, section.split(".")), *(str(p) for p in e["loc"])]
            if e["type"] == "extra_forbidden":
                section = ".".join(loc[:-1]) or "the top level"
                problems.append(f"unknown key {loc[-1]!r} in {section}")
            else:
                problems.append(f"{'.'.join(loc) or 'the top level'}: {e['msg']}")
        return cls(f"{where}: " + "; ".join(problems))


class InputError(OpsAgentError):
    """Input from outside (an exception report, a CLI argument) is malformed."""


class UsageError(InputError):
    """The command line is wrong (a bad option value, a missing confirmation): exit code 2."""


class ToolError(OpsAgentError):
    """A tool definition is invalid or a tool name is unknown."""


class ToolCallError(OpsAgentError):
    """A call to a system of record failed at the transport level (timeout, connection refused)."""


class PolicyError(OpsAgentError):
    """The policy could not be evaluated (a bad policy file, a check that crashed)."""


class LimitExceeded(PolicyError):
    """A call would exceed a limit: what was limited, the value it would reach, and the limit.

    Inside the policy's check chain it becomes a deny (or a hold for approval, per `on_exceed`);
    `consulted` holds every limit looked at, for the trace.
    """

    def __init__(self, what: str, value: float, limit: float, *, on_exceed: str = "deny",
                 consulted: list[Any] | None = None) -> None:
        super().__init__(f"{what}: {value:g} would exceed the limit of {limit:g}")
        self.what, self.value, self.limit = what, value, limit
        self.on_exceed = on_exceed
        self.consulted = consulted or []


class PermitError(PolicyError):
    """An executor was asked to run an action without a valid permit for exactly that action."""


class EngineError(OpsAgentError):
    """The planner engine failed: it could not start, or a generation did not finish."""


class UnexpectedEngineCall(EngineError):
    """A scripted engine was called when its script had no step left, or with the wrong request."""


class PlannerOutputError(EngineError):
    """The planner's output does not parse into a decision (truncated or invalid JSON)."""


class TraceError(OpsAgentError):
    """The trace store could not be written or read."""


class CaseNotFound(OpsAgentError):
    """No case has this id."""


class OverloadedError(OpsAgentError):
    """A bounded resource is full; the caller should retry later (the API answers 503)."""

    def __init__(self, what: str, value: float, limit: float) -> None:
        super().__init__(f"{what}: {value} reached the limit of {limit}")
        self.what, self.value, self.limit = what, value, limit


class ApprovalError(OpsAgentError):
    """An approval decision was refused: unknown id, not pending, expired, a different action
    than the one previewed, or an identity that may not approve."""


class AuthError(OpsAgentError):
    """A request carried no valid credentials (401) or lacks the role it needs (403). `subject`
    names a known token that was refused (revoked, expired), for the access log."""

    def __init__(self, message: str, *, status: int = 401, subject: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.subject = subject


class CaseStateError(OpsAgentError):
    """The case's status does not allow the operation, e.g. cancelling a case that is final (409)."""


class IdempotencyConflict(OpsAgentError):
    """An idempotency key was used again with a different request (409): a retry must repeat the
    original request exactly, a new request needs a new key."""


class RateLimited(OpsAgentError):
    """A caller sent requests faster than its rate allows (429): what was limited, the rate it
    reached, the limit, and the seconds until a retry can succeed."""

    def __init__(self, what: str, value: float, limit: float, retry_after_s: float) -> None:
        super().__init__(f"{what}: {value:g} requests reached the limit of {limit:g}; "
                         f"retry in {retry_after_s:.1f} s")
        self.what, self.value, self.limit = what, value, limit
        self.retry_after_s = retry_after_s


class ApiBusy(OpsAgentError):
    """The API kept answering 429 (rate limited) or 503 (overloaded) until the client's retries or
    its deadline ran out; `retry_after_s` is the wait the last answer asked for."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLarge(OpsAgentError):
    """A request body is larger than allowed (413): what was limited, its size and the limit."""

    def __init__(self, what: str, value: float, limit: float) -> None:
        super().__init__(f"{what}: {value:g} bytes exceed the limit of {limit:g}")
        self.what, self.value, self.limit = what, value, limit


class AutonomyError(OpsAgentError):
    """An autonomy mode change was refused (unknown class or mode, no reason given, a promotion
    the gates do not allow) or the mode store cannot be written."""


class SecretError(OpsAgentError):
    """A secret a tool source needs cannot be had: the environment variable or the secrets-file
    key is not set, the secrets file cannot be read, or the value is too short to redact. The
    message names the reference, never a value."""



class StateError(OpsAgentError):
    """The state database (`state:` URL) cannot be used: unreachable, refused the credentials, or
    holds a schema newer than this build. The message names the URL with its password redacted."""


class StateBusy(StateError):
    """Another live process holds what this one needs (the case manager's lease; a system is
    running on the database a migration would write)."""


class StateUnavailable(StateError):
    """The state database cannot be reached right now: connection refused or lost, the server
    shutting down or starting up. The transaction that raised it was rolled back, unless its
    commit was sent and the answer lost; every store write is keyed (case id, submission key,
    action key, permit nonce), so trying it again later is safe. The API answers 503."""
