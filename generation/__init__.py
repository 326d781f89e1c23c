"""Generator stack (no Lightning): LM loading, LM scoring, prompts, REPLUG, NLI filter, QA metrics."""
