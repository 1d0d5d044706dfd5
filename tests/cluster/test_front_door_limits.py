"""The front door's smaller holes of issue 19: one rate limit whatever the replica count, a cheap
and limited health check, CSRF on console login and logout, a Secure cookie over HTTPS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from opsagent.cluster.api.request_limits import ApiLimits

from opsagent.cluster.api.request_limits import SharedRateLimiter
from opsagent.cluster.console.pages import csrf_value
from opsagent.cluster.front_door import create_app
from opsagent.errors import RateLimited
from opsagent.policy.identity import TokenStore
from opsagent.policy.state import state_db


def test_two_replicas_share_one_rate_limit(tmp_path):
    """Hole 8: two API replicas each allowed the full rate. Two limiters on one file (two
    replicas, as separate connections) let the caller through `requests` times in all."""
    now = [1000.0]
    path = tmp_path / "rate_limit.sqlite"
    replicas = [SharedRateLimiter(path, 5, 60.0, clock=lambda: now[0]) for _ in range(2)]
    for n in range(5):
        replicas[n % 2].hit("alice")
    for replica in replicas:
        with pytest.raises(RateLimited) as refused:
            replica.hit("alice")
    assert refused.value.limit == 5 and refused.value.retry_after_s == pytest.approx(60.0)
    replicas[1].hit("bob")
    now[0] += 61
    replicas[0].hit("alice")


class _Cases:
    """A case manager stand-in that counts how often health asks it."""

    def __init__(self) -> None:
        self.asked = 0

        class _Method:
            def remote(_self):
                self.asked += 1

                async def answer():
                    return 0
                return answer()
        self.open_cases = _Method()


def _apps(tmp_path, replicas=2, requests=5, cookie_secure=None):
    cases = _Cases()
    apps = [create_app(cases, None, tokens_path=state_db(tmp_path), traces_dir=tmp_path / "traces",
                       limits=ApiLimits(requests_per_window=requests, window_s=60),
                       rate_limit_path=tmp_path / "rate_limit.sqlite", cookie_secure=cookie_secure)
            for _ in range(replicas)]
    return cases, apps


def _client(app, base="http://testserver") -> TestClient:
    return TestClient(app, base_url=base, follow_redirects=False)


def test_the_app_replicas_count_one_limit_and_health_is_limited_and_cached(tmp_path):
    cases, apps = _apps(tmp_path)
    token = TokenStore(state_db(tmp_path)).add("alice", ["submitter"])
    clients = [_client(app) for app in apps]
    health = [clients[n % 2].get("/v1/health").status_code for n in range(8)]
    assert health == [200] * 5 + [429] * 3  # limited per client address, over both replicas
    assert cases.asked <= 2  # and cached: the case manager is not asked on every check
    calls = [clients[n % 2].get("/v1/approvals", headers={"Authorization": f"Bearer {token}"}).status_code
             for n in range(7)]
    assert calls == [403] * 5 + [429] * 2  # a caller's 5 requests a minute, whichever replica answers


def test_login_needs_the_form_value_from_its_own_cookie(tmp_path):
    _, (app, _) = _apps(tmp_path, requests=100)
    token = TokenStore(state_db(tmp_path)).add("alice", ["auditor"])
    with _client(app) as browser:
        forged = browser.post("/console/login", data={"token": token, "csrf": "guessed"})
        assert forged.status_code == 303 and "error=" in forged.headers["location"]
        assert "opsagent_console" not in forged.cookies
        form = browser.get("/console/login")
        nonce = form.cookies["opsagent_login"]
        assert f'name="csrf" value="{nonce}"' in form.text
        ok = browser.post("/console/login", data={"token": token, "csrf": nonce})
        assert ok.status_code == 303 and ok.headers["location"] == "/console/overview"
        assert browser.cookies.get("opsagent_console") == token
        refused = browser.post("/console/logout", data={})
        assert refused.status_code == 403 and browser.cookies.get("opsagent_console") == token
        out = browser.post("/console/logout", data={"csrf": csrf_value(token)})
        assert out.status_code == 303 and "opsagent_console" not in browser.cookies


@pytest.mark.parametrize(("base", "configured", "secure"), [
    ("https://ops.example", None, True), ("http://localhost", None, False), ("http://localhost", True, True),
    ("https://ops.example", False, False)])
def test_the_cookies_are_secure_over_https_unless_configured(tmp_path, base, configured, secure):
    _, (app, _) = _apps(tmp_path, requests=100, cookie_secure=configured)
    with _client(app, base) as browser:
        form = browser.get("/console/login")
    (header,) = [v for k, v in form.headers.multi_items() if k == "set-cookie"]
    assert header.startswith("opsagent_login=") and ("secure" in header.lower()) is secure


def test_the_session_cookie_is_secure_over_https(tmp_path):
    _, (app, _) = _apps(tmp_path, requests=100)
    token = TokenStore(state_db(tmp_path)).add("alice", ["auditor"])
    with _client(app, "https://ops.example") as browser:
        nonce = browser.get("/console/login").cookies["opsagent_login"]
        ok = browser.post("/console/login", data={"token": token, "csrf": nonce})
    assert ok.status_code == 303
    session = [v for k, v in ok.headers.multi_items() if k == "set-cookie" and v.startswith("opsagent_console=")]
    assert session and "secure" in session[0].lower()
