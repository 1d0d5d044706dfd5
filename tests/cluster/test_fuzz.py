"""Fuzz the API from its own OpenAPI document with schemathesis: every operation, valid and
invalid inputs, as an admin (every route open) and as a submitter (the refusals). A bounded run:
`EXAMPLES` per operation, mode and role; it counts and prints the requests it made.

Checks: no 5xx, status codes and content types as documented, bodies matching their documented
schema, invalid input refused with a 4xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.evals.bench.soak import GoldScriptedEngine
from tests.fakes.local_actors import local_front_door

EXAMPLES = 20
ROLES = ("admin", "submitter")
SEMANTIC_422 = {"PUT /v1/policy": [positive_data_acceptance]}
"""A schema-valid policy upload is a YAML text the schema cannot judge: most are refused (422)."""


@pytest.fixture(scope="module")
def door(platform, tmp_path_factory):
    playbooks = {"weight_mismatch": builtin_playbooks()["weight_mismatch"]}
    limits = ApiLimits(requests_per_window=1_000_000)  # the fuzzer is one very busy caller
    # a planner that always escalates: a fuzzed exception that reaches it ends at once
    # (answers every call: how many exceptions the fuzzer gets through is its own choice)
    engine = GoldScriptedEngine(lambda request: {"evidence": {"scale_check": "unknown"}, "tool": "finish",
                                                 "status": "escalated", "reason": "fuzz"})
    with local_front_door(platform.registry(), tmp_path_factory.mktemp("fuzz"), engine=engine,
                          playbooks=playbooks, limits=limits) as running:
        yield running


def test_the_api_survives_fuzzing_from_its_openapi_document(door):
    failures: list[str] = []
    made = {"requests": 0}
    for role in ROLES:
        schema = schemathesis.openapi.from_url(f"{door.url}/openapi.json")
        # the token as configured auth: negative cases then vary the inputs, not the credentials
        schema.config.update(base_url=door.url, headers=door.headers(role))
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(result.ok(), mode, role, door.headers(role), made, failures)
    sent = len((door.state / "access.jsonl").read_text().splitlines())  # cases plus the checks' probes
    print(f"\nschemathesis: {made['requests']} generated cases, {sent} requests, {len(failures)} failures")
    assert made["requests"] >= EXAMPLES * 2 * len(ROLES)  # it really ran
    assert not failures, "\n\n".join(failures[:10])
    with httpx.Client(base_url=door.url) as client:  # and the API still answers
        assert client.get("/v1/health").json()["status"] == "ok"


def _fuzz(operation, mode, role, headers, made, failures) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call()
        made["requests"] += 1
        try:
            excluded = list(SEMANTIC_422.get(operation.label, []))
            if response.status_code == 413:  # a body over the size limit is refused before parsing
                excluded.append(negative_data_rejection)
            case.validate_response(response, headers=headers, excluded_checks=excluded)
        except (AssertionError, BaseExceptionGroup) as exc:  # go on; report every failure at the end
            failures.append(f"{operation.label} [{role}, {mode.value}]: {str(exc)[:2000]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (e.g. an operation without parameters)
        if mode is GenerationMode.POSITIVE:
            raise
