"""Callbacks: retrieval evaluation, index refresh."""

from callbacks.index_refresh import IndexRefresh
from callbacks.retrieval_eval import RetrievalEvaluator

__all__ = ["IndexRefresh", "RetrievalEvaluator"]
