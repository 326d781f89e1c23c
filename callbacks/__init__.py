"""Callbacks: retrieval evaluation, index refresh, rollout/text logging."""

from callbacks.retrieval_eval import RetrievalEvaluator

__all__ = ["RetrievalEvaluator"]
