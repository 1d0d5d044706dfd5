"""The sandbox logistics platform: WMS, TMS, ERP and ticketing over SQLite, a launcher and seeded
scenarios (the exception catalogue built on them lives in `opsagent.evals.catalogue`)."""

from opsagent.tools.platform.launcher import Platform
from opsagent.tools.platform.scenarios import (
    AdminWrite, InjectedException, inject_weight_mismatch, seed_background, upload,
)

__all__ = ["AdminWrite", "InjectedException", "Platform", "inject_weight_mismatch", "seed_background", "upload"]
