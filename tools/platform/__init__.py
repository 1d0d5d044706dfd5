"""The sandbox logistics platform: a WMS and a TMS over SQLite, a launcher and seeded scenarios."""

from opsagent.tools.platform.launcher import Platform
from opsagent.tools.platform.scenarios import InjectedException, inject_weight_mismatch, seed_background

__all__ = ["InjectedException", "Platform", "inject_weight_mismatch", "seed_background"]
