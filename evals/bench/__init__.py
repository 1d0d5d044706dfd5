"""The speed benchmark (`opsagent bench`): opsagent's latency and throughput per concurrency level,
where each case's time goes, how far it is from the engine's floor, and the LangGraph peer."""
