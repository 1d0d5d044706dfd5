"""The policy actor's threads (approval watch, webhook notifier, gate watch) stop on
`stop_policy_threads`, and the in-process front door stops them at teardown, so no thread goes on
ticking against a removed state folder after a test. Stopping them is an in-process call, never
an actor method: a compromised caller inside the cluster must not switch off the gates."""

from __future__ import annotations

import threading

from opsagent.cluster.actors import PolicyActor, stop_policy_threads
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
    stop_policy_threads(policy.instance)
    assert _watch_threads(before) == []
    stop_policy_threads(policy.instance)  # twice is harmless


def test_the_in_process_front_door_leaves_no_watch_thread_running(platform, tmp_path):
    from opsagent.agents.engines import ScriptedEngine

    before = set(threading.enumerate())
    with local_front_door(platform.registry(), tmp_path, engine=ScriptedEngine([]), playbooks={},
                          policy_options=_options(tmp_path)):
        assert sorted(t.name for t in _watch_threads(before)) == sorted(WATCHES)
    assert _watch_threads(before) == []


def test_no_actor_method_stops_the_policys_threads():
    """Every public method of the policy actor is callable by anything in the cluster holding its
    handle; none may stop the gate watch or the approval watch."""
    methods = set(PolicyActor.__ray_metadata__.modified_class.__dict__)
    assert not {"close", "stop", "shutdown", "stop_policy_threads"} & methods
