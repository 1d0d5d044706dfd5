"""The operations console end to end: the whole system on Ray with Serve and a scripted planner,
driven in headless Chromium (Debian's `chromium`) through Playwright. An approver logs in,
approves one held action and rejects another with a reason, and sees the cases resume.
Screenshots go to $OPSAGENT_SCREENSHOTS (default: /tmp/opsagent-console)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
import ray

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.views import query
from opsagent.cluster.config import SystemConfig
from opsagent.evals.bench.soak import GoldScriptedEngine
from opsagent.cluster.system import OpsAgentSystem
from opsagent.policy.identity import TokenStore
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.autonomy import credential
from tests.guards import require
from tests.fakes.held_planner import held_then_decided

CHROMIUM = os.environ.get("OPSAGENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
try:
    import playwright.sync_api as playwright_api
except ImportError:
    playwright_api = None
# CI must run the browser tests: a missing browser or Playwright fails the run instead of skipping
pytestmark = [pytest.mark.ray, pytest.mark.browser,
              *require(os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}: the console's browser tests "
                       "cannot run (scripts/setup.sh installs Debian's chromium with apt-get)"),
              *require(playwright_api is not None, "Playwright is not installed (the `test` extra)")]
SHOTS = Path(os.environ.get("OPSAGENT_SCREENSHOTS", "/tmp/opsagent-console"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def system(ray_runtime, platform, tmp_path_factory):
    risky = inject_weight_mismatch(platform, count=2, seed=7301, suspect_share=0.0)
    good = inject_weight_mismatch(platform, count=1, seed=7302, suspect_share=0.0)
    # answers every call (no script to use up): the tests check each case's end state instead
    engine = GoldScriptedEngine(held_then_decided({r.entities["shipment_id"] for r in risky}))
    config = SystemConfig(traces_dir=tmp_path_factory.mktemp("traces"),
                          state_dir=tmp_path_factory.mktemp("state"), executors=1)
    running = OpsAgentSystem(config, platform.registry(), engine=engine,
                             playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]}).start()
    ray.get(running.handles["policy"].set_mode.remote(
        "weight_mismatch", "autonomous", credential(running.tokens_path, "e2e-setup"), "e2e: low-risk writes run, high-risk ones are held"))
    url = running.serve(port=_free_port())
    tokens = TokenStore(running.tokens_path)
    yield dict(system=running, url=url, risky=risky, good=good, config=config,
               tokens={r: tokens.add(f"{r}-e2e", [r]) for r in ("submitter", "approver", "admin")})
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def _submit_and_hold(system) -> dict[str, str]:
    """Submit the exceptions over the API as ops would; wait until the risky ones are held. Once
    per module: whichever test comes first (they run in random order) submits, the others reuse."""
    if "ids" in system:
        return system["ids"]
    headers = {"Authorization": f"Bearer {system['tokens']['submitter']}"}
    ids = {}
    with httpx.Client(base_url=system["url"], headers=headers, timeout=30) as client:
        for inst in [*system["risky"], *system["good"]]:
            r = client.post("/v1/exceptions", json={"exception_type": inst.exception_type,
                                                    "description": inst.description,
                                                    "entities": inst.entities},
                            headers={"Idempotency-Key": f"e2e-{inst.entities['shipment_id']}"})
            assert r.status_code == 202, r.text
            ids[inst.entities["shipment_id"]] = r.json()["case_id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = {sid: client.get(f"/v1/cases/{cid}").json()["status"] for sid, cid in ids.items()}
            if all(s not in ("received", "planning", "executing") for s in statuses.values()):
                break
            time.sleep(0.2)
    assert [statuses[r.entities["shipment_id"]] for r in system["risky"]] == ["awaiting_approval"] * 2
    assert statuses[system["good"][0].entities["shipment_id"]] == "resolved"
    system["ids"] = ids
    return ids


def _tms(platform, sid):
    return httpx.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()


def test_an_approver_approves_one_rejects_another_and_sees_the_cases_resume(system, browser, platform):
    ids = _submit_and_hold(system)
    approve_sid, reject_sid = (r.entities["shipment_id"] for r in system["risky"])
    billed_before = {sid: _tms(platform, sid)["billed_weight_kg"] for sid in (approve_sid, reject_sid)}
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    page.on("dialog", lambda dialog: dialog.accept())  # the console confirms before approving
    base = system["url"]

    page.goto(f"{base}/console/approvals")  # no session yet: sent to the login form
    assert page.url.endswith("/console/login") or "/console/login?" in page.url
    page.fill("#token", "oat_wrong")
    page.click("form[action='/console/login'] button")
    assert "unknown or revoked token" in page.inner_text(".flash.bad")
    page.fill("#token", system["tokens"]["approver"])
    page.click("form[action='/console/login'] button")
    page.wait_for_url("**/console/overview")
    assert page.inner_text("#unsupervised .big") == "0"
    page.screenshot(path=str(SHOTS / "1-overview.png"), full_page=True)

    page.goto(f"{base}/console/approvals")
    cards = {page.get_attribute(f"article.approval:nth-of-type({i})", "data-case"): i for i in (1, 2)}
    assert set(cards) == {ids[approve_sid], ids[reject_sid]}
    approve_card = f"article.approval[data-case='{ids[approve_sid]}']"
    reject_card = f"article.approval[data-case='{ids[reject_sid]}']"
    inst = next(r for r in system["risky"] if r.entities["shipment_id"] == approve_sid)
    assert page.inner_text(f"{approve_card} .exception-text") == inst.description
    assert "scale_check" in page.inner_text(f"{approve_card} .evidence")
    changed = " ".join(page.locator(f"{approve_card} table.diff tr.changed").all_inner_texts())
    assert "billed_weight_kg" in changed and str(billed_before[approve_sid]) in changed
    page.screenshot(path=str(SHOTS / "2-approval-queue.png"), full_page=True)

    # a decision is bound to the action shown: a tampered digest is refused and nothing runs
    page.eval_on_selector(f"{reject_card} form.approve input[name=args_digest]", "e => e.value = 'f'.repeat(64)")
    page.click(f"{reject_card} button.approve")
    page.wait_for_selector(".flash.bad")
    assert "differs from the one previewed" in page.inner_text(".flash.bad")

    page.click(f"{approve_card} button.approve")
    page.wait_for_selector(".flash.ok")
    assert "approved" in page.inner_text(".flash.ok")
    page.fill(f"{reject_card} textarea[name=reason]", "The carrier's weight is right: re-weighed at the hub.")
    page.click(f"{reject_card} button.reject")
    page.wait_for_selector(".flash.ok")
    assert "rejected" in page.inner_text(".flash.ok")
    assert page.inner_text("h1 .count") == "0 pending"
    page.screenshot(path=str(SHOTS / "3-after-decisions.png"), full_page=True)

    page.goto(f"{base}/console/cases/{ids[approve_sid]}")
    _wait_for_status(page, "resolved")
    _reload_until(page, "ol.timeline li.k-status:has-text('resolved')")  # the traces caught up
    assert page.locator("ol.timeline li.k-approval").count() == 2  # requested, then approved
    steps = page.inner_text("table.steps")
    assert "tms_adjust_billed_weight" in steps and "tms_open_weight_dispute" in steps
    page.screenshot(path=str(SHOTS / "4-approved-case-resolved.png"), full_page=True)

    page.goto(f"{base}/console/cases/{ids[reject_sid]}")
    _wait_for_status(page, "escalated")
    assert "rejected" in page.inner_text(".reason")
    _reload_until(page, "ol.timeline li.k-approval:has-text('rejected')")
    page.screenshot(path=str(SHOTS / "5-rejected-case-escalated.png"), full_page=True)

    page.goto(f"{base}/console/cases?status=resolved")
    listed = page.inner_text("table.cases")
    assert ids[approve_sid] in listed and ids[reject_sid] not in listed
    page.screenshot(path=str(SHOTS / "6-cases-resolved.png"), full_page=True)

    # the systems of record and the audit agree
    assert _tms(platform, approve_sid)["billed_weight_kg"] != billed_before[approve_sid]
    assert _tms(platform, reject_sid)["billed_weight_kg"] == billed_before[reject_sid]
    system["system"].flush_traces()
    traces = system["config"].traces_dir
    assert query(traces, UNSUPERVISED_HIGH_RISK)[1] == [(0,)]
    _, rows = query(traces, "SELECT status, approver, reason FROM approvals ORDER BY status")
    assert [r[:2] for r in rows] == [("approved", "approver-e2e"), ("rejected", "approver-e2e")]
    page.close()


def test_a_submitter_sees_its_cases_but_not_the_approval_queue(system, browser):
    _submit_and_hold(system)
    page = browser.new_page()
    page.goto(f"{system['url']}/console/login")
    page.fill("#token", system["tokens"]["submitter"])
    page.click("form[action='/console/login'] button")
    page.wait_for_url("**/console/cases")
    assert page.locator("nav a[href='/console/approvals']").count() == 0
    assert page.locator("table.cases tbody tr[data-case]").count() >= 3
    response = page.goto(f"{system['url']}/console/approvals")
    assert response.status == 403 and "lacks the approver or auditor role" in page.inner_text(".flash.bad")
    page.click("button:has-text('Log out')")
    page.wait_for_url("**/console/login")
    assert page.goto(f"{system['url']}/console/cases").url.split("?")[0].endswith("/console/login")
    page.close()


def test_an_admin_changes_a_class_mode_on_the_autonomy_page(system, browser):
    _submit_and_hold(system)  # the cases this page lists, run while the class was autonomous
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{system['url']}/console/login")
    page.fill("#token", system["tokens"]["admin"])
    page.click("form[action='/console/login'] button")
    page.wait_for_url("**/console/overview")
    page.goto(f"{system['url']}/console/autonomy")
    row = "#class-weight_mismatch"
    assert page.inner_text(f"{row} .badge") == "autonomous"
    assert "e2e-setup" in page.inner_text(row)  # who set it, and why
    page.select_option(f"{row} select[name=mode]", "supervised")
    page.fill(f"{row} input[name=reason]", "e2e: watch every write for a week")
    page.click(f"{row} button")
    page.wait_for_selector(".flash.ok")
    assert "weight_mismatch is now supervised" in page.inner_text(".flash.ok")
    assert page.inner_text(f"{row} .badge") == "supervised"
    assert "admin-e2e" in page.inner_text(row)
    page.screenshot(path=str(SHOTS / "7-autonomy.png"), full_page=True)
    page.goto(f"{system['url']}/console/cases?mode=supervised")
    assert page.locator("table.cases tbody tr[data-case]").count() >= 3
    page.close()
    running = system["system"]  # back to the module's mode, for the tests that run after this one
    ray.get(running.handles["policy"].set_mode.remote(
        "weight_mismatch", "autonomous", credential(running.tokens_path, "e2e-setup"), "e2e: the module's mode again"))


def _wait_for_status(page, status: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while page.inner_text("#case-status") != status:
        if time.monotonic() > deadline:
            pytest.fail(f"case still {page.inner_text('#case-status')}, not {status}")
        time.sleep(0.3)
        page.reload()


def _reload_until(page, selector: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while page.locator(selector).count() == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"{selector} not on {page.url}")
        time.sleep(0.3)
        page.reload()
