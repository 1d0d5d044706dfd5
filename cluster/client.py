"""A small HTTP client of the opsagent API, used by the CLI and the demo."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from opsagent.errors import ApiBusy, ApprovalError, AuthError, InputError, OpsAgentError

DEFAULT_URL = "http://127.0.0.1:8000"
RETRIES = 3
MAX_WAIT_S = 10.0


class OpsAgentClient:
    """Talks to `/v1` with a bearer token (`OPSAGENT_TOKEN`) at `OPSAGENT_URL`.

    A 429 or 503 answer is retried when repeating the request is safe (reads, submissions with
    an idempotency key, approval decisions): up to `RETRIES` times, waiting its Retry-After (at most `MAX_WAIT_S`);
    or, given a `deadline` (a `time.monotonic()` value), as often as needed, waiting the whole
    Retry-After each time, for as long as the deadline allows. Past that: ApiBusy."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30) -> None:
        self.url = url or os.environ.get("OPSAGENT_URL", DEFAULT_URL)
        token = token or os.environ.get("OPSAGENT_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "OpsAgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, retry: bool | None = None,
              deadline: float | None = None, **kwargs: Any) -> Any:
        retry = method == "GET" if retry is None else retry
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise OpsAgentError(f"cannot reach {self.url}: {exc}") from exc
            if response.status_code not in (429, 503) or not retry:
                break
            wait = _retry_after(response, None if deadline is not None else MAX_WAIT_S)
            attempt += 1
            if (deadline is None and attempt > RETRIES) or (
                    deadline is not None and time.monotonic() + wait > deadline):
                raise ApiBusy(f"{method} {path}: {response.status_code} {_detail(response)}", wait)
            time.sleep(wait)
        if response.status_code < 300:
            return response.json()
        message = f"{method} {path}: {response.status_code} {_detail(response)}"
        if response.status_code in (401, 403):
            raise AuthError(message, status=response.status_code)
        if path.startswith("/v1/approvals") and response.status_code in (404, 409):
            raise ApprovalError(message)
        if response.status_code == 422:
            raise InputError(message)
        if response.status_code in (429, 503):
            raise ApiBusy(message, _retry_after(response, None))
        raise OpsAgentError(message)

    def submit(self, exception_type: str, description: str, entities: dict[str, str], *,
               idempotency_key: str | None = None, deadline: float | None = None) -> dict:
        """Open a case; with an idempotency key a retry (ours or the caller's) makes no second case."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/v1/exceptions", retry=idempotency_key is not None, headers=headers,
                          deadline=deadline,
                          json={"exception_type": exception_type, "description": description,
                                "entities": entities})

    def case(self, case_id: str) -> dict:
        return self._call("GET", f"/v1/cases/{case_id}")

    def cases(self, *, deadline: float | None = None, **filters: Any) -> dict:
        """One page of cases: status, exception_type, mode, submitted_by, case_id (a list of ids),
        offset, limit."""
        return self._call("GET", "/v1/cases", deadline=deadline,
                          params={k: v for k, v in filters.items() if v is not None})

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
        """Approve or reject; a 429/503 answer is retried like a read: the same approver's same
        decision sent again is answered with the recorded one (never a second decision)."""
        verb = "approve" if approve else "reject"
        return self._call("POST", f"/v1/approvals/{approval_id}/{verb}", retry=True,
                          json={"args_digest": args_digest, "reason": reason})


    def set_mode(self, exception_type: str, mode: str, reason: str, override: bool = False) -> dict:
        """Change a class's autonomy mode (admin), through the gates' rule."""
        return self._call("PUT", f"/v1/autonomy/{exception_type}",
                          json={"mode": mode, "reason": reason, "override": override})

    def tokens(self) -> list[dict]:
        return self._call("GET", "/v1/tokens")

    def create_token(self, name: str, roles: list[str], expires_s: float | None = None) -> dict:
        return self._call("POST", "/v1/tokens", json={"name": name, "roles": roles, "expires_s": expires_s})

    def revoke_token(self, ref: str) -> list[dict]:
        return self._call("POST", f"/v1/tokens/{ref}/revoke")


def _retry_after(response: httpx.Response, cap: float | None) -> float:
    """The answer's Retry-After in seconds (1 if absent or unreadable), at most `cap`."""
    try:
        wait = max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        wait = 1.0
    return wait if cap is None else min(cap, wait)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body.get("detail"))
    except (ValueError, AttributeError):
        return response.text
