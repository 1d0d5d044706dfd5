"""A small HTTP client of the opsagent API, used by the CLI and the demo."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from opsagent.errors import ApprovalError, AuthError, InputError, OpsAgentError

DEFAULT_URL = "http://127.0.0.1:8000"
RETRIES = 3
MAX_WAIT_S = 10.0


class OpsAgentClient:
    """Talks to `/v1` with a bearer token (`OPSAGENT_TOKEN`) at `OPSAGENT_URL`.

    A 429 or 503 answer is retried (up to `RETRIES` times, waiting its Retry-After, at most
    `MAX_WAIT_S`) when repeating the request is safe: reads, and submissions with an
    idempotency key."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30) -> None:
        self.url = url or os.environ.get("OPSAGENT_URL", DEFAULT_URL)
        token = token or os.environ.get("OPSAGENT_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "OpsAgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> Any:
        retry = method == "GET" if retry is None else retry
        for attempt in range(RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise OpsAgentError(f"cannot reach {self.url}: {exc}") from exc
            if response.status_code in (429, 503) and retry and attempt < RETRIES:
                time.sleep(_retry_after(response))
                continue
            break
        if response.status_code < 300:
            return response.json()
        try:
            body = response.json()
            detail = body.get("error") or body.get("detail")
        except ValueError:
            detail = response.text
        message = f"{method} {path}: {response.status_code} {detail}"
        if response.status_code in (401, 403):
            raise AuthError(message, status=response.status_code)
        if path.startswith("/v1/approvals") and response.status_code in (404, 409):
            raise ApprovalError(message)
        if response.status_code == 422:
            raise InputError(message)
        raise OpsAgentError(message)

    def submit(self, exception_type: str, description: str, entities: dict[str, str], *,
               idempotency_key: str | None = None) -> dict:
        """Open a case; with an idempotency key a retry (ours or the caller's) makes no second case."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/v1/exceptions", retry=idempotency_key is not None, headers=headers,
                          json={"exception_type": exception_type, "description": description,
                                "entities": entities})

    def case(self, case_id: str) -> dict:
        return self._call("GET", f"/v1/cases/{case_id}")

    def cases(self, **filters: Any) -> dict:
        """One page of cases: status, exception_type, mode, submitted_by, offset, limit."""
        return self._call("GET", "/v1/cases", params={k: v for k, v in filters.items() if v is not None})

    def timeline(self, case_id: str) -> list[dict]:
        return self._call("GET", f"/v1/cases/{case_id}/timeline")

    def cancel(self, case_id: str, reason: str | None = None) -> dict:
        return self._call("POST", f"/v1/cases/{case_id}/cancel", json={"reason": reason})

    def approvals(self, status: str | None = "pending") -> list[dict]:
        return self._call("GET", "/v1/approvals", params={"status": status} if status else None)

    def approval(self, approval_id: str) -> dict:
        """The approval request (with its preview); `approval_context` adds the case around it."""
        return self.approval_context(approval_id)["approval"]

    def approval_context(self, approval_id: str) -> dict:
        return self._call("GET", f"/v1/approvals/{approval_id}")

    def decide(self, approval_id: str, *, approve: bool, args_digest: str,
               reason: str | None = None) -> dict:
        verb = "approve" if approve else "reject"
        return self._call("POST", f"/v1/approvals/{approval_id}/{verb}",
                          json={"args_digest": args_digest, "reason": reason})


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_WAIT_S, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0
