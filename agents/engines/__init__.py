"""Planner engines behind one interface: vLLM in-process, OpenAI-compatible server, scripted."""

from opsagent.agents.engines.base import ChatMessage, GenerationRequest, GenerationResult, PlannerEngine
from opsagent.agents.engines.openai_engine import OpenAIEngine, OpenAIEngineConfig
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.engines.vllm_engine import VllmEngine, VllmEngineConfig

__all__ = [
    "ChatMessage", "GenerationRequest", "GenerationResult", "OpenAIEngine", "OpenAIEngineConfig",
    "PlannerEngine", "ScriptedEngine", "VllmEngine", "VllmEngineConfig",
]
