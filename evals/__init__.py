"""Evals: the exception catalogue (`catalogue`), frozen eval sets and the split by seed
(`evalset`), the scorer and its baselines (`scoring`), gold resolutions as planner output
(`gold`), the eval runner on the real cluster (`runner`), its metrics (`metrics`) and reports
(`report`), and the `opsagent catalogue` and `opsagent eval` commands (`cli`).

Submodules are imported on use: `evals.gold` is needed by the agents' tests and recorder, the
rest only by evals.
"""
