"""Evals: the exception catalogue (`catalogue`), frozen eval sets and the split by seed
(`evalset`), the scorer and its baselines (`scoring`), gold resolutions as planner output
(`gold`) and the `opsagent catalogue` command (`cli`).

Submodules are imported on use: `evals.gold` is needed by the agents' tests and recorder, the
rest only by evals.
"""
