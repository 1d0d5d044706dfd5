"""opsagent's actors in the test process, called like Ray handles, and a uvicorn server in a
thread: the front door's real app over the real actor classes, without starting Ray."""

from __future__ import annotations

from opsagent.policy.state import state_db

import asyncio
import contextlib
import inspect
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            # arguments and results are copied, as Ray copies them between processes
            a, k = pickle.loads(pickle.dumps((args, kwargs)))
            result = self._fn(*a, **k)
            if inspect.isawaitable(result):
                result = await result
            return pickle.loads(pickle.dumps(result))
        return call()


class LocalActor:
    """An instance of a `@ray.remote` class in this process: `handle.method.remote(...)` is an
    awaitable, as on a Ray actor handle."""

    def __init__(self, actor_class: Any, *args: Any, **kwargs: Any) -> None:
        self.instance = actor_class.__ray_metadata__.modified_class(*args, **kwargs)

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.instance, name))


class LocalObject(LocalActor):
    """An existing plain object called like a Ray handle (e.g. a planner port standing in for
    the planner actor)."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance


class _Server(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


class ThreadedServer:
    """Serves an ASGI app with uvicorn on a free loopback port, in a thread with its own loop
    (the loop the in-process actors' tasks run on)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                              log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the server's loop (e.g. set an asyncio.Event a test holds)."""
        assert self._server.loop is not None
        self._server.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self._server.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._server.loop).result(timeout)


class FrontDoor:
    """A running in-process front door: its URL, one token per role, the actors behind it."""

    def __init__(self, server: ThreadedServer, actors: dict[str, LocalActor], tokens: dict[str, str],
                 traces: Any, state: Any) -> None:
        self.server, self.actors, self.tokens = server, actors, tokens
        self.url, self.traces, self.state = server.url, traces, state

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


@contextlib.contextmanager
def local_front_door(registry: Any, root: Path, *, engine: Any, playbooks: dict[str, Any],
                     max_open_cases: int = 1000, limits: Any = None,
                     modes: dict[str, str] | None = None,
                     planner: Any = None, policy_options: dict[str, Any] | None = None) -> Iterator[FrontDoor]:
    """The front door's app over the real actor classes, in this process, served over HTTP.
    Tokens: one per role, named after it, plus `submitter2` (a second submitter). `modes` sets
    classes' autonomy modes first (the shipped policy starts every class in shadow). `planner`:
    a plan(case, allowed_tools) object used instead of the planner actor over `engine`.
    `policy_options`: further keyword arguments of the policy actor (e.g. its webhook)."""
    from opsagent.cluster.actors import (
        ExecutorActor, PlannerActor, PolicyActor, TraceWriterActor, stop_policy_threads,
    )
    from opsagent.cluster.cases import CaseManager
    from opsagent.cluster.front_door import create_app
    from opsagent.policy.config import load_default_policy
    from opsagent.policy.credentials import Credential
    from opsagent.policy.identity import TokenStore

    traces, state = root / "traces", root / "state"
    store = TokenStore(state_db(state))
    planner = LocalActor(PlannerActor, engine, playbooks, registry) if planner is None else LocalObject(planner)
    policy = LocalActor(PolicyActor, load_default_policy(), registry, str(state),  # creates its key
                        **(policy_options or {}))
    setter = Credential.of(store.add("test-setup", ["admin"]))
    for exception_type, mode in (modes or {}).items():
        policy.instance.set_mode(exception_type, mode, setter, "test set-up")
    executor = LocalActor(ExecutorActor, registry, policy.instance.public_keys())
    tracer = LocalActor(TraceWriterActor, str(traces), flush_every_s=0.2)
    cases = LocalActor(CaseManager, planner, policy, [executor], tracer, registry, 6, max_open_cases)
    app = create_app(cases, policy, tokens_path=state_db(state), traces_dir=traces,
                     limits=limits, access_log=state / "access.jsonl")
    tokens = {role: store.add(role, [role]) for role in ("submitter", "approver", "auditor", "admin")}
    tokens["submitter2"] = store.add("submitter2", ["submitter"])
    with ThreadedServer(app) as server:
        try:
            yield FrontDoor(server, dict(planner=planner, policy=policy, cases=cases, tracer=tracer,
                                         executor=executor),
                            tokens, traces, state)
        finally:
            try:
                server.run(tracer.close.remote())
            finally:  # its watch threads would go on ticking against a removed state folder
                stop_policy_threads(policy.instance)
