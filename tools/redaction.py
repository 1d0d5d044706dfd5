"""Replace secret values in whatever leaves the executor: results, errors, arguments.

The executor redacts every `ToolResult` before returning it, so traces, prompts, approval
previews and logs downstream only ever see `[redacted]`. A value is also caught in the encodings
a system is likely to echo it in: JSON-escaped, URL-quoted, and as part of `Bearer <value>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from opsagent.tools.spec import ToolResult

MASK = "[redacted]"


class Redactor:
    """Replaces known secret values (longest first) in strings, dict keys and values, lists."""

    def __init__(self, values: Iterable[str]) -> None:
        variants: set[str] = set()
        for value in values:
            if not value:
                continue
            variants.update({value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value)})
        self._values = sorted((v for v in variants if v), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def __call__(self, value: Any) -> Any:
        """A copy of `value` (JSON-like) with every secret replaced; other types pass unchanged."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self(v) for v in value)
        return value

    def result(self, result: ToolResult) -> ToolResult:
        """The result with its body and error redacted."""
        if not self._values:
            return result
        return result.model_copy(update={"body": self(result.body),
                                         "error": None if result.error is None else self.text(result.error)})
