"""A small HTTP client of the opsagent API, used by the CLI and the demo."""

from __future__ import annotations

import os
from typing import Any

import httpx

from opsagent.errors import ApprovalError, AuthError, InputError, OpsAgentError

DEFAULT_URL = "http://127.0.0.1:8000"


class OpsAgentClient:
    """Talks to `/v1` with a bearer token (`OPSAGENT_TOKEN`) at `OPSAGENT_URL`."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30) -> None:
        self.url = url or os.environ.get("OPSAGENT_URL", DEFAULT_URL)
        token = token or os.environ.get("OPSAGENT_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "OpsAgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OpsAgentError(f"cannot reach {self.url}: {exc}") from exc
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

    def submit(self, exception_type: str, description: str, entities: dict[str, str]) -> dict:
        return self._call("POST", "/v1/exceptions", json={
            "exception_type": exception_type, "description": description, "entities": entities})

    def case(self, case_id: str) -> dict:
        return self._call("GET", f"/v1/cases/{case_id}")

    def approvals(self, status: str | None = "pending") -> list[dict]:
        return self._call("GET", "/v1/approvals", params={"status": status} if status else None)

    def approval(self, approval_id: str) -> dict:
        found = [a for a in self.approvals(None) if a["approval_id"] == approval_id]
        if not found:
            raise ApprovalError(f"no approval {approval_id!r}")
        return found[0]

    def decide(self, approval_id: str, *, approve: bool, args_digest: str,
               reason: str | None = None) -> dict:
        verb = "approve" if approve else "reject"
        return self._call("POST", f"/v1/approvals/{approval_id}/{verb}",
                          json={"args_digest": args_digest, "reason": reason})
