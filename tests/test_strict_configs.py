"""Every configuration file refuses keys it does not know, naming the key and its section."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from opsagent.agents.engines.vllm_engine import VllmEngineConfig, vllm_engine_arg_names
from opsagent.agents.playbooks.model import Playbook, load_playbook
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.deploy import DeployArgs, build
from opsagent.cluster.serve_app import ApiArgs
from opsagent.errors import ConfigError
from opsagent.evals.bench.run import BenchConfig
from opsagent.evals.regressions import RegressionCase
from opsagent.evals.runner import EvalConfig
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.tools.sources import McpSource, OpenAPISource, load_sources

ROOTS = [SystemConfig, PolicyConfig, EvalConfig, DeployArgs, ApiArgs, Playbook, OpenAPISource,
         McpSource, RegressionCase, BenchConfig]
"""The models read from files a person writes (or the code writes and a person may edit)."""


def _models(annotation: object) -> typing.Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models(arg)
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            yield from _models(arg)


def every_section() -> list[type[BaseModel]]:
    seen: dict[type, None] = {}
    todo = list(ROOTS)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen[model] = None
        for field in model.model_fields.values():
            todo += list(_models(field.annotation))
    return sorted(seen, key=lambda m: m.__qualname__)


@pytest.mark.parametrize("model", every_section(), ids=lambda m: m.__qualname__)
def test_every_section_forbids_unknown_keys(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid", f"{model.__module__}.{model.__qualname__}"


def test_the_walk_reaches_nested_sections() -> None:
    names = {m.__name__ for m in every_section()}
    assert {"VllmEngineConfig", "OpenAIEngineConfig", "ExecutorAutoscalingConfig", "FewShotConfig",
            "ApiLimits", "ToolPolicy", "Turn", "Example"} <= names


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_typo_in_the_system_config_names_key_and_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "system.yaml", "planner:\n  vllm:\n    tensor_parallel_size: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'tensor_parallel_size' in planner\.vllm$"):
        SystemConfig.from_yaml(path)
    path = _write(tmp_path / "top.yaml", "executor: 4\n")
    with pytest.raises(ConfigError, match="unknown key 'executor' in the top level"):
        SystemConfig.from_yaml(path)
    path = _write(tmp_path / "scaling.yaml", "executor_autoscaling: {max_executor: 4}\n")
    with pytest.raises(ConfigError, match="unknown key 'max_executor' in executor_autoscaling"):
        SystemConfig.from_yaml(path)


def test_a_typo_in_the_openai_engine_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "system.yaml", "planner:\n  engine: openai\n  openai:\n"
                  "    base_url: http://x/v1\n    model: m\n    api_key: sk-123\n")
    with pytest.raises(ConfigError, match=r"unknown key 'api_key' in planner\.openai"):
        SystemConfig.from_yaml(path)


def test_a_typo_in_a_policy_names_the_tool_section() -> None:
    text = load_default_policy().model_dump_json()
    import json

    data = json.loads(text)
    klass = next(iter(data["classes"]))
    tool = next(iter(data["classes"][klass]["tools"]))
    data["classes"][klass]["tools"][tool]["rsik"] = "low"
    with pytest.raises(ConfigError, match=rf"unknown key 'rsik' in classes\.{klass}\.tools\.{tool}$"):
        PolicyConfig.from_text(json.dumps(data), where="policy.yaml")


def test_a_typo_in_a_tool_source(tmp_path: Path) -> None:
    path = _write(tmp_path / "sources.yaml", "sources:\n  - kind: openapi\n    name: tms\n"
                  "    base_url: http://x\n    spec: http://x/openapi.json\n    timeout: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'timeout' in"):
        load_sources(path)


def test_a_typo_in_an_eval_config(tmp_path: Path) -> None:
    path = _write(tmp_path / "eval.yaml", "name: a\nsystem:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_step' in system$"):
        EvalConfig.from_yaml(path)


def test_a_typo_in_a_playbook_example(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.yaml", "exception_type: x\ngoal: g\n")
    (tmp_path / "x.examples.json").write_text(
        '[{"report": {"exception_type": "x", "description": "d"}, '
        '"turns": [{"output": {"tool": "finish"}, "observaton": "ok"}]}]')
    with pytest.raises(ConfigError, match=r"unknown key 'observaton' in examples\.0\.turns\.0"):
        load_playbook(path)


def test_a_typo_in_the_deployment_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown key 'sandboxed' in the top level"):
        build({"sandboxed": True})
    with pytest.raises(ConfigError, match=r"unknown key 'limit' in api"):
        build({"sandbox": True, "api": {"limit": {}}})


def test_engine_args_are_checked_against_vllms_own_fields() -> None:
    assert {"tensor_parallel_size", "max_num_seqs", "seed"} <= vllm_engine_arg_names()
    config = VllmEngineConfig(engine_args={"tensor_parallel_size": 2, "max_num_seqs": 64})
    kwargs = config.engine_kwargs("m")
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["max_num_seqs"] == 64 and kwargs["model"] == "m"
    from vllm.engine.arg_utils import AsyncEngineArgs

    assert AsyncEngineArgs(**kwargs).tensor_parallel_size == 2  # vLLM takes them as they are


def test_an_unknown_engine_arg_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "system.yaml",
                  "planner:\n  vllm:\n    engine_args: {tensor_paralel_size: 2, max_num_seqs: 8}\n")
    with pytest.raises(ConfigError, match=r"planner\.vllm\.engine_args: .*unknown vLLM engine argument "
                       r"'tensor_paralel_size'"):
        SystemConfig.from_yaml(path)


def test_an_engine_arg_with_its_own_key_is_refused() -> None:
    with pytest.raises(ValueError, match="set dtype as planner.vllm's own key"):
        VllmEngineConfig(engine_args={"dtype": "float32"})
