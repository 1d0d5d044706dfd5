"""The policy actor's threads (approval watch, webhook notifier, gate watch) stop on `close()`, and
the in-process front door closes its policy actor at teardown, so no thread goes on ticking
against a removed state folder after a test."""

from __future__ import annotations

import threading

from opsagent.cluster.actors import PolicyActor
from opsagent.cluster.webhooks import WebhookConfig
from opsagent.policy.config import load_default_policy
from tests.fakes.local_actors import LocalActor, local_front_door

WATCHES = {"approval-watch", "approval-webhook", "opsagent-gates"}


def _watch_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The watch threads started since `before` that are still running."""
    return [t for t in threading.enumerate() if t not in before and t.name in WATCHES and t.is_alive()]


def _options(root) -> dict:
    return dict(webhook=WebhookConfig(url="http://127.0.0.1:9/hook"), webhook_secret="s",
                traces_dir=str(root / "traces"), gate_check_interval_s=3600.0,
                approval_check_interval_s=0.05)


def test_close_stops_the_watch_the_notifier_and_the_gate_watch(registry, tmp_path):
    before = set(threading.enumerate())
    policy = LocalActor(PolicyActor, load_default_policy(), registry, str(tmp_path / "state"),
                        **_options(tmp_path))
    assert sorted(t.name for t in _watch_threads(before)) == sorted(WATCHES)
    policy.instance.close()
    assert _watch_threads(before) == []
    policy.instance.close()  # twice is harmless


def test_the_in_process_front_door_leaves_no_watch_thread_running(platform, tmp_path):
    from opsagent.agents.engines import ScriptedEngine

    before = set(threading.enumerate())
    with local_front_door(platform.registry(), tmp_path, engine=ScriptedEngine([]), playbooks={},
                          policy_options=_options(tmp_path)):
        assert sorted(t.name for t in _watch_threads(before)) == sorted(WATCHES)
    assert _watch_threads(before) == []
