"""Per-class playbooks: instructions, the evidence to state, and approved worked examples."""

from opsagent.agents.playbooks.model import Example, EvidenceField, Playbook, Turn, load_playbook

__all__ = ["Example", "EvidenceField", "Playbook", "Turn", "load_playbook"]
