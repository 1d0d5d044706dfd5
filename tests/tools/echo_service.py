"""A tiny HTTP service for the tool-source tests: it demands a bearer token, echoes it back (in a
body and in an error), fails on purpose (503 a set number of times, slowly), and counts calls.

`serve()` runs it on a free loopback port in a daemon thread and yields its base URL.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel


class Note(BaseModel):
    text: str


class EchoState:
    """What the service saw, for the tests to check."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.authorization: list[str | None] = []
        self.notes: dict[str, str] = {}


def create_app(token: str, state: EchoState) -> FastAPI:
    app = FastAPI(title="echo", version="1")

    def seen(request: Request, route: str) -> str:
        state.calls[route] += 1
        auth = request.headers.get("authorization")
        state.authorization.append(auth)
        if auth != f"Bearer {token}":
            raise HTTPException(401, "missing or wrong bearer token")
        return auth

    @app.get("/echo/{word}", operation_id="echo_read", summary="Echo a word and the caller's credentials.")
    def echo_read(word: str, request: Request, shout: bool = False) -> dict:
        auth = seen(request, "echo_read")
        return {"word": word.upper() if shout else word, "seen_authorization": auth}

    @app.get("/fail", operation_id="echo_fail", summary="Always refuses, quoting the credentials.")
    def echo_fail(request: Request) -> dict:
        auth = seen(request, "echo_fail")
        raise HTTPException(400, f"credentials {auth} are not allowed here")

    @app.get("/flaky/{key}", operation_id="echo_flaky", summary="503 for the first `failures` calls per key.")
    def echo_flaky(key: str, failures: int, request: Request) -> dict:
        seen(request, "echo_flaky")
        state.calls[f"flaky:{key}"] += 1
        if state.calls[f"flaky:{key}"] <= failures:
            raise HTTPException(503, "try again")
        return {"key": key, "calls": state.calls[f"flaky:{key}"]}

    @app.get("/slow", operation_id="echo_slow", summary="Answers after `seconds`.")
    async def echo_slow(seconds: float, request: Request) -> dict:
        seen(request, "echo_slow")
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.post("/notes/{key}", operation_id="echo_write_note", summary="Store a note; 503 on the first try.")
    def echo_write_note(key: str, note: Note, request: Request, dry_run: bool = False,
                        idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> dict:
        seen(request, "echo_write_note")
        state.calls[f"note:{key}"] += 1
        if state.calls[f"note:{key}"] == 1:
            raise HTTPException(503, "not yet")
        if not dry_run:
            state.notes[key] = note.text
        return {"key": key, "text": note.text, "dry_run": dry_run, "idempotency_key": idempotency_key}

    return app


@contextmanager
def serve(token: str) -> Iterator[tuple[str, EchoState]]:
    """Run the echo service on 127.0.0.1; yields (base URL, what it saw)."""
    state = EchoState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(token, state), log_level="warning", access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="echo-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the echo service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", state
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
