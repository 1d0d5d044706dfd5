"""Run a frozen eval set through the real cluster and score every case.

For each configuration (`EvalConfig`: system config, policy, playbooks, autonomy mode) and each
trial: a fresh sandbox platform with the set's instances planted, on the same ports every trial
(so the system's tool registry stays valid and one system, with its engine loaded once, serves
every trial of a configuration); every instance submitted over the Serve API with at most
`concurrency` cases in flight; a simulated approver deciding held actions (`approver_decision`);
each case waited for, scored against the gold reference (`evals.scoring`), and its cost read
from the trace store. Configurations run one after the other, each on its own system (the
actors have fixed names), on one Ray runtime that the caller starts (`cluster.runtime`).

Importing this module does not import Ray: `cluster.system` is imported when a system starts.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.engines.base import PlannerEngine
from opsagent.agents.playbooks import Playbook
from opsagent.agents.playbooks.model import builtin_playbooks, load_playbook
from opsagent.agents.tracing.audit import UNSUPERVISED_HIGH_RISK_ROWS
from opsagent.agents.tracing.views import query, sql_list
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.cluster.config import SystemConfig
from opsagent.errors import ApprovalError, ConfigError, InputError, OpsAgentError
from opsagent.evals.catalogue import Instance, get_class, plant
from opsagent.evals.catalogue._model import GoldAction, same
from opsagent.evals.metrics import FINAL, CaseResult, EvalRun
from opsagent.evals.scoring import AgentRun, GoldReference, score, snapshots
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.identity import Role, TokenStore
from opsagent.tools.platform.launcher import Platform
from opsagent.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from opsagent.cluster.system import OpsAgentSystem

Mode = Literal["autonomous", "supervised", "shadow"]
RUNNING = {"received", "planning", "executing"}
APPROVER = "eval-approver"


class EvalConfig(BaseModel):
    """One configuration under evaluation (`--config`/`--mode`, or a `--compare` YAML)."""

    model_config = {"extra": "forbid"}
    name: str = Field("base", pattern=r"^[A-Za-z0-9_.-]{1,40}$", description="Label in reports and results.")
    system: SystemConfig = Field(default_factory=SystemConfig,
                                 description="The system (planner model, executors, max steps...); in "
                                 "YAML a mapping or the path of a SystemConfig YAML. Its traces_dir, "
                                 "state_dir and state are replaced by the run's (a state database of its "
                                 "own), and its gate checks are off.")
    policy: Path | None = Field(None, description="Policy YAML; None: system.policy_path, else the default.")
    playbooks: Path | None = Field(None, description="Folder of <class>.yaml playbooks (with their "
                                   ".examples.json) replacing the built-in ones of those classes.")
    mode: Mode = Field("autonomous", description="Autonomy mode of the set's classes (policy/autonomy.py): "
                       "autonomous (low-risk writes run), supervised (every write needs approval), "
                       "shadow (writes only proposed).")
    class_modes: dict[str, Mode] = Field(
        default_factory=dict, description="Class -> its mode, overriding `mode` for that class (a "
        "deployment's mix: the classes the gates promoted autonomous, the others supervised).")

    @classmethod
    def from_yaml(cls, path: Path) -> EvalConfig:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
            if isinstance(data.get("system"), str):
                data["system"] = SystemConfig.from_yaml(data["system"])
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError.invalid(f"eval config {path}", exc) from exc
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"eval config {path}: {exc}") from exc

    def load_policy(self) -> PolicyConfig:
        path = self.policy or self.system.policy_path
        return PolicyConfig.from_yaml(Path(path)) if path else load_default_policy()

    def load_playbooks(self) -> dict[str, Playbook]:
        books = builtin_playbooks()
        if self.playbooks is not None:
            if not self.playbooks.is_dir():
                raise ConfigError(f"playbooks folder {self.playbooks} does not exist")
            books |= {b.exception_type: b for b in map(load_playbook, sorted(self.playbooks.glob("*.yaml")))}
        return books


def apply_mode(policy: PolicyConfig, mode: Mode, classes: list[str]) -> PolicyConfig:
    """THE hook between the eval and the autonomy modes (policy/autonomy.py): `policy` with each
    of `classes` starting in `mode` (its `initial_mode`). An eval's system starts on a fresh state
    folder, so that is the mode its decisions read: `autonomous` (low-risk writes run, high-risk
    ones wait for the simulated approver), `supervised` (every write waits) or `shadow` (writes
    are only proposed and dry-run). The shipped policy starts every class in shadow, which would
    measure nothing being done."""
    data = policy.model_dump(mode="json")
    for name in classes:
        if name in data["classes"]:
            data["classes"][name]["initial_mode"] = mode
    return PolicyConfig.model_validate(data)


EngineFactory = Callable[[EvalConfig], PlannerEngine]
Progress = Callable[[str, str], None]  # (configuration, the case's status) as each case ends


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def select(instances: list[Instance], classes: list[str] | None) -> list[Instance]:
    """The set's instances of `classes` (all if None); InputError for an unknown class or one the
    set has no instance of."""
    if not classes:
        return list(instances)
    in_set = {i.exception_type for i in instances}
    for name in classes:
        get_class(name)  # unknown class: the catalogue's error names the known ones
        if name not in in_set:
            raise InputError(f"the eval set has no instance of class {name!r}; it has {', '.join(sorted(in_set))}")
    return [i for i in instances if i.exception_type in classes]


def run_eval(instances: list[Instance], configs: list[EvalConfig], *, traces: Path, trials: int = 1,
             concurrency: int = 8, engines: EngineFactory | None = None, progress: Progress | None = None,
             case_timeout_s: float = 1800.0, background: int = 25, run_id: str | None = None,
             eval_set: str | None = None) -> EvalRun:
    """Run every configuration `trials` times over `instances`; Ray must be running."""
    if not instances:
        raise InputError("the eval set is empty")
    if trials < 1 or concurrency < 1:
        raise InputError(f"trials and concurrency must be >= 1, got {trials} and {concurrency}")
    names = [c.name for c in configs]
    if not configs or len(set(names)) != len(names):
        raise InputError(f"need one or more configurations with distinct names, got {names}")
    started, t0 = datetime.now(UTC), time.monotonic()
    run_id = run_id or new_run_id()
    reference = GoldReference.build(instances)
    rows: list[CaseResult] = []
    models: dict[str, str | None] = {}
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="opsagent-eval-") as scratch:
        for config in configs:
            with _Session(config, instances, traces, Path(scratch) / config.name, engines) as session:
                for trial in range(trials):
                    with _fresh_platform(ports, background) as platform:
                        ports = ports or {s: int(u.rsplit(":", 1)[1]) for s, u in platform.base_urls.items()}
                        plant(instances, platform)
                        session.ensure_started(platform.registry())
                        models[config.name] = session.system.model if session.system else None
                        ctx = _Trial(run_id, config.name, trial, session, reference, case_timeout_s, progress)
                        rows += ctx.run(instances, platform, concurrency)
    return EvalRun(run_id=run_id, eval_set=eval_set, configs=names, models=models, trials=trials,
                   concurrency=concurrency, instances=len(instances),
                   classes=sorted({i.exception_type for i in instances}), started_at=started,
                   wall_s=time.monotonic() - t0, rows=rows)


@contextlib.contextmanager
def _fresh_platform(ports: dict[str, int], background: int) -> Iterator[Platform]:
    """An empty platform with `background` shipments, on `ports` (free ones if empty)."""
    try:
        platform = Platform(ports=ports, background=background).start()
    except OSError as exc:
        raise OpsAgentError(f"cannot start a fresh platform on the ports of the last one {ports}: {exc}") from exc
    try:
        yield platform
    finally:
        platform.stop()


def approver_decision(approval: dict[str, Any], inst: Instance) -> tuple[bool, str]:
    """The simulated human approver: approve a held action iff it is one of the gold's actions
    (same tool and key arguments), reject it otherwise, with a reason the planner is told."""
    tool, args = approval["tool"], approval.get("args") or {}
    match = next((a for a in inst.gold.actions if matches_gold(a, tool, args)), None)
    if match is not None:
        return True, f"checked against the records: {match.label()} is right"
    return False, (f"{tool} with these arguments is not the right fix for this exception; "
                   "do not retry it")


def correct_writes(steps: list[dict[str, Any]], gold: list[GoldAction]) -> int:
    """How many of `steps` (executed writes) match a gold write, each gold action matching once."""
    return sum(matched_writes(steps, gold))


def matched_writes(steps: list[dict[str, Any]], gold: list[GoldAction]) -> list[bool]:
    """For each of `steps` (executed writes, in order): does it match a gold write not matched
    by an earlier one?"""
    unused = [a for a in gold if a.writes]
    out = []
    for s in steps:
        match = next((a for a in unused if matches_gold(a, s["tool"], s.get("args") or {})), None)
        if match is not None:
            unused.remove(match)
        out.append(match is not None)
    return out


def matches_gold(action: GoldAction, tool: str, args: dict[str, Any]) -> bool:
    """The write is the gold action: same tool, same key arguments."""
    return action.tool == tool and all(k in args and same(args[k], action.args[k]) for k in action.key_args)


class _Api:
    """The bits of the /v1 API the runner uses; waits out 429/503 (Retry-After) and retries a
    dropped connection a few times."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        failures = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failures += 1
                if failures > 5:
                    raise OpsAgentError(f"{method} {path}: {exc}") from exc
                time.sleep(0.5 * failures)
                continue
            if response.status_code in (429, 503) and failures < 120:
                failures += 1
                time.sleep(min(float(response.headers.get("Retry-After") or 1), 10.0))
                continue
            if response.status_code < 300:
                return response.json()
            message = f"{method} {path}: {response.status_code} {response.text[:300]}"
            if path.startswith("/v1/approvals") and response.status_code in (404, 409):
                raise ApprovalError(message)
            raise OpsAgentError(message)


HARNESS_LIMITS = ApiLimits(requests_per_window=1_000_000)
"""The eval system's front door limits. Its callers are the harness alone: one submitter token
polling every case in flight every `_Trial.poll_s`, one approver token. The default per-caller
rate (600 a minute) throttled the harness itself: a 16-case run kept ~6 cases in flight behind
4,409 answers 429 in 15 minutes, measuring the rate limiter instead of the agent."""


class _Session:
    """One configuration's system, started on the first trial's platform and kept for the rest."""

    def __init__(self, config: EvalConfig, instances: list[Instance], traces: Path, scratch: Path,
                 engines: EngineFactory | None) -> None:
        classes = sorted({i.exception_type for i in instances})
        self.playbooks = config.load_playbooks()
        missing = [c for c in classes if c not in self.playbooks]
        if missing:
            raise ConfigError(f"configuration {config.name!r} has no playbook for {', '.join(missing)}")
        self.policy = apply_mode(config.load_policy(), config.mode, classes)
        for mode in set(config.class_modes.values()):
            self.policy = apply_mode(self.policy, mode, [c for c, m in config.class_modes.items() if m == mode])
        planner = config.system.planner
        if planner.few_shot is not None and planner.few_shot.traces is None:
            raise ConfigError(f"configuration {config.name!r}: planner.few_shot.traces must name a trace "
                              "store of training cases (the run's own store holds the cases being scored)")
        if planner.warm_classes is None:
            planner = planner.model_copy(update={"warm_classes": classes})
        self.config = config
        # no automatic demotion (gate_check_interval_s): a run measures the one mode it is given
        self.system_config = config.system.model_copy(update={
            "traces_dir": traces, "state_dir": scratch / "state", "state": None, "planner": planner,
            "gate_check_interval_s": None})
        self.engine = engines(config) if engines else None
        self.system: OpsAgentSystem | None = None
        self.submitter: _Api | None = None
        self.approver: _Api | None = None
        self.registry: ToolRegistry | None = None

    def ensure_started(self, registry: ToolRegistry) -> None:
        if self.system is not None:
            return
        self.registry = registry
        from opsagent.cluster.system import OpsAgentSystem  # Ray loads when a system starts, not on import

        self.system = OpsAgentSystem(self.system_config, registry, engine=self.engine,
                                     playbooks=self.playbooks, policy=self.policy)
        # the configured engine's start-up can take minutes: say what it is doing, on stderr
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if self.engine is None else None
        try:
            self.system.start(say=say)
            url = self.system.serve(port=0, limits=HARNESS_LIMITS)
        except BaseException:
            self.system.stop()
            raise
        tokens = TokenStore(self.system.tokens_path)
        self.submitter = _Api(url, tokens.add("eval-submitter", [Role.submitter, Role.auditor]))
        self.approver = _Api(url, tokens.add(APPROVER, [Role.approver]))

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        for api in (self.submitter, self.approver):
            if api is not None:
                api.close()
        if self.system is not None:
            self.system.stop()


@dataclass
class _Outcome:
    """What the runner saw of one case."""

    inst: Instance
    case_id: str | None = None
    view: dict[str, Any] | None = None
    approved: int = 0
    rejected: int = 0
    timed_out: bool = False
    error: str | None = None
    decided: set[str] = field(default_factory=set)


@dataclass
class _Trial:
    run_id: str
    config: str
    trial: int
    session: _Session
    reference: GoldReference
    case_timeout_s: float
    progress: Progress | None
    poll_s: float = 0.3

    def run(self, instances: list[Instance], platform: Platform, concurrency: int) -> list[CaseResult]:
        outcomes = []
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-case") as pool:
            futures = [pool.submit(self._case, inst) for inst in instances]
            for future in as_completed(futures):
                outcomes.append(done := future.result())
                if self.progress:
                    self.progress(self.config, "error" if done.error and not done.view else
                                  "timeout" if done.timed_out else (done.view or {}).get("status", "?"))
        self._wait_idle()
        assert self.session.system is not None
        self.session.system.flush_traces()
        snaps = snapshots(platform)
        facts = _trace_facts(self.session.system_config.traces_dir,
                             [o.case_id for o in outcomes if o.case_id])
        order = {inst.instance_id: n for n, inst in enumerate(instances)}
        return [self._row(o, snaps, facts.get(o.case_id or "", {}))
                for o in sorted(outcomes, key=lambda o: order[o.inst.instance_id])]

    def _case(self, inst: Instance) -> _Outcome:
        out = _Outcome(inst)
        api, approver = self.session.submitter, self.session.approver
        assert api is not None and approver is not None
        try:
            out.case_id = api.call("POST", "/v1/exceptions", json={
                "exception_type": inst.exception_type, "description": inst.description,
                "entities": inst.entities})["case_id"]
            deadline = time.monotonic() + self.case_timeout_s
            while True:
                out.view = api.call("GET", f"/v1/cases/{out.case_id}")
                status = out.view["status"]
                if status in FINAL:
                    return out
                if status == "awaiting_approval":
                    self._decide(out)
                if time.monotonic() > deadline:
                    out.timed_out = True
                    return out
                time.sleep(self.poll_s)
        except OpsAgentError as exc:
            out.error = str(exc)
            return out

    def _decide(self, out: _Outcome) -> None:
        """Decide the held action of a case awaiting approval, once."""
        assert out.view is not None and self.session.approver is not None
        approval_id = out.view["steps"][-1].get("approval_id") if out.view["steps"] else None
        if not approval_id or approval_id in out.decided:
            return
        pending = self.session.approver.call("GET", "/v1/approvals", params={"status": "pending"})
        approval = next((a for a in pending if a["approval_id"] == approval_id), None)
        if approval is None:
            return  # not stored yet, or decided meanwhile: look again on the next poll
        approve, reason = approver_decision(approval, out.inst)
        verb = "approve" if approve else "reject"
        try:
            self.session.approver.call("POST", f"/v1/approvals/{approval_id}/{verb}",
                                       json={"args_digest": approval["args_digest"], "reason": reason})
        except ApprovalError as exc:  # expired, or decided by someone else
            out.error = str(exc)
        out.decided.add(approval_id)
        out.approved += approve
        out.rejected += not approve

    def _wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until no case of this trial still runs, so none writes into the next platform."""
        assert self.session.submitter is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.session.submitter.call("GET", "/v1/health").get("open_cases", 0) == 0:
                return
            time.sleep(self.poll_s)

    def _row(self, out: _Outcome, snaps: Any, facts: dict[str, Any]) -> CaseResult:
        inst, view = out.inst, out.view or {}
        registry = self.session.registry
        assert registry is not None
        run = AgentRun.from_case(inst.instance_id, view)
        result = score(inst, run, snaps, self.reference[inst.instance_id])
        steps = view.get("steps", [])
        writes = [s for s in steps if s["executed"] and s.get("ok") and not s.get("approval_id")
                  and s["tool"] in registry and registry.get(s["tool"]).writes]
        status = view.get("status") or "error"
        if out.timed_out and status not in FINAL:
            status = "timeout"
        return CaseResult(
            run_id=self.run_id, config=self.config, trial=self.trial, instance_id=inst.instance_id,
            exception_type=inst.exception_type, variant=inst.variant, case_id=out.case_id, status=status,
            outcome=run.outcome or view.get("proposed_outcome"), reason=view.get("reason"),
            gold_outcome=inst.gold.outcome, score=result.score,
            outcome_ok=result.outcome_ok, state_ok=result.state_ok, missing_actions=result.missing_actions,
            failed_assertions=result.failed_assertions, steps=len(steps),
            approvals_requested=sum(bool(s.get("approval_id")) for s in steps),
            approvals_approved=out.approved, approvals_rejected=out.rejected,
            autonomous_writes=len(writes), autonomous_writes_correct=correct_writes(writes, inst.gold.actions),
            unsupervised_high_risk=facts.get("unsupervised", 0), latency_s=facts.get("latency_s"),
            planner_calls=facts.get("calls", 0), prompt_tokens=facts.get("prompt_tokens", 0),
            completion_tokens=facts.get("completion_tokens", 0),
            received_at=view.get("received_at"), finished_at=view.get("finished_at"), error=out.error,
        )


def _trace_facts(traces: Path, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per case: planner calls and tokens, latency (receipt to the last executed write's finish,
    or to the final status), unsupervised high-risk actions."""
    if not case_ids:
        return {}
    ids = sql_list(case_ids)
    facts: dict[str, dict[str, Any]] = {c: {} for c in case_ids}
    _, rows = query(traces, f"""
        SELECT case_id, count(*), sum(prompt_tokens), sum(completion_tokens) FROM planner_calls
        WHERE case_id IN {ids} GROUP BY case_id""")
    for cid, calls, prompt, completion in rows:
        facts[cid].update(calls=int(calls), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))
    _, rows = query(traces, f"""
        WITH last_write AS (
          SELECT case_id, max(finished_at) AS at FROM actions
          WHERE executed AND writes AND NOT dry_run AND error IS NULL AND case_id IN {ids}
          GROUP BY case_id)
        SELECT c.case_id, epoch(coalesce(w.at, c.finished_at) - c.received_at)
        FROM cases c LEFT JOIN last_write w USING (case_id) WHERE c.case_id IN {ids}""")
    for cid, seconds in rows:
        facts[cid]["latency_s"] = seconds
    _, rows = query(traces, f"SELECT case_id, count(*) FROM ({UNSUPERVISED_HIGH_RISK_ROWS}) "
                            f"WHERE case_id IN {ids} GROUP BY case_id")
    for cid, count in rows:
        facts[cid]["unsupervised"] = int(count)
    return facts


@contextlib.contextmanager
def ray_runtime() -> Iterator[None]:
    """A private temp folder and a local Ray runtime for one eval run (the CLI's; tests have theirs)."""
    from opsagent.cluster.runtime import private_tmpdir, start_ray, stop_ray

    with private_tmpdir():
        start_ray(num_cpus=2)
        try:
            yield
        finally:
            stop_ray()
