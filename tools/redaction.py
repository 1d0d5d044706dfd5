"""Replace secret values in whatever leaves the executor: results, errors, arguments.

The executor redacts every `ToolResult` before returning it, so traces, prompts, approval
previews and logs downstream only ever see `[redacted]`. Redaction runs on the whole text first,
and only then is an error cut to `MAX_ERROR_CHARS`: a cut made first could split a secret so that
no whole value is left to find, and leave half of it. A value is also caught in the encodings a
system is likely to echo it in: Python repr, JSON-escaped, URL-quoted, base64, and inside any
base64 run that decodes to text containing it (HTTP Basic's `base64(user:pass)`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from opsagent.tools.spec import ToolResult

MASK = "[redacted]"
MAX_ERROR_CHARS = 300
"""An error is cut to this many characters, after redaction."""
_SCAN_CHARS = 200_000  # longer text is cut to this before redaction (then to MAX_ERROR_CHARS)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


class Redactor:
    """Replaces known secret values (longest first) in strings, dict keys and values, lists."""

    def __init__(self, values: Iterable[str]) -> None:
        variants: set[str] = set()
        for value in values:
            if not value:
                continue
            variants.update({value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value),
                             repr(value)[1:-1], ascii(value)[1:-1],
                             base64.b64encode(value.encode()).decode().rstrip("=")})
        self._values = sorted((v for v in variants if v), key=len, reverse=True)
        self._plain = sorted({v for v in values if v}, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return _BASE64_RUN.sub(self._decoded, text) if self._plain else text

    def _decoded(self, match: re.Match[str]) -> str:
        """A base64 run whose decoded text holds a secret (e.g. `user:secret`) is masked whole."""
        run = match.group(0)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                plain = decode(run + "=" * (-len(run.rstrip("=")) % 4)).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                continue
            if any(value in plain for value in self._plain):
                return MASK
        return run

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
        """The result with its body and error redacted, then its error cut to MAX_ERROR_CHARS."""
        error = result.error
        if error is not None:
            error = cut(self.text(error[:_SCAN_CHARS]) if self._values else error)
        if not self._values:
            return result if error == result.error else result.model_copy(update={"error": error})
        return result.model_copy(update={"body": self(result.body), "error": error})


def cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text`, cut to `limit` characters with a marker (only ever after redaction)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
