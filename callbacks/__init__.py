"""Callbacks: retrieval evaluation, index refresh, rollout/text logging."""

from callbacks.retrieval_eval import RetrievalEvaluator

__all__ = ["RetrievalEvaluator"]

from callbacks.index_refresh import IndexRefresh  # noqa: E402

__all__ += ["IndexRefresh"]
