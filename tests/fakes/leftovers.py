"""Every scripted engine a test (or a fixture) makes is checked for unused steps when it ends.

`install()` makes each `ScriptedEngine` register itself with where it was made; the fixtures in
tests/conftest.py take a mark when a session, module or test starts and, when it ends, fail with
every engine made since whose script was not used up (unless the test already called
`assert_done` itself, e.g. inside `pytest.raises`). A planner that stops early or loops therefore
fails the test, not only where a test remembers to check.

An engine handed to a Ray actor is a copy in another process: the fixture asks the actors for
their leftovers (`ray_planner_leftovers`) and then `settle`s the local copy.
"""

from __future__ import annotations

import traceback
from typing import Any

from opsagent.agents.engines.scripted import ScriptedEngine

_MADE: list[tuple[ScriptedEngine, str]] = []
_installed = False


def install() -> None:
    """Register every ScriptedEngine (and subclass) made from now on."""
    global _installed
    if _installed:
        return
    original = ScriptedEngine.__init__

    def tracked(self: ScriptedEngine, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        here = next((f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-1])
                     if "/engines/scripted.py" not in f.filename and "/load.py" not in f.filename),
                    "?")
        _MADE.append((self, here))

    ScriptedEngine.__init__ = tracked  # type: ignore[method-assign]
    _installed = True


def mark() -> int:
    return len(_MADE)


def unused_since(start: int) -> list[str]:
    """The engines made since `start` with unused steps nobody checked; forgets all of them."""
    found = [f"{engine.remaining} unused step(s) of {engine.remaining + len(engine.outputs)} "
             f"in the scripted engine made at {where}"
             for engine, where in _MADE[start:] if not engine.checked and engine.remaining]
    del _MADE[start:]
    return found


def settle(engine: ScriptedEngine) -> None:
    """Count `engine` as checked: its script ran elsewhere (a Ray actor's copy), checked there."""
    engine._checked = True  # noqa: SLF001 - the flag assert_done sets


def ray_planner_leftovers(planners: list[Any]) -> dict[int, int]:
    """Unused steps of the scripted engine in each planner actor (index -> count, only non-zero).
    Asked through Ray's `__ray_call__`, so the actors need no test-only method."""
    import ray

    def remaining(actor: Any) -> int:
        engine = actor._planner.engine  # noqa: SLF001
        return engine.remaining if isinstance(engine, ScriptedEngine) else 0

    counts = ray.get([p.__ray_call__.remote(remaining) for p in planners])
    return {i: n for i, n in enumerate(counts) if n}


def ray_planner_extend(planners: list[Any], steps: list[Any]) -> None:
    """Give the scripted engine in each planner actor `steps` more steps (a fixture that sizes
    its script stage by stage: each stage adds the calls it expects)."""
    import ray

    def extend(actor: Any, more: list[Any]) -> None:
        actor._planner.engine.extend(more)  # noqa: SLF001

    ray.get([p.__ray_call__.remote(extend, steps) for p in planners])
