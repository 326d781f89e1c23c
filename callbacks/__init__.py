"""Callbacks: retrieval evaluation, index refresh, progress lines for log files."""

from callbacks.divergence import DivergenceGuard
from callbacks.index_refresh import IndexRefresh
from callbacks.retrieval_eval import RetrievalEvaluator
from callbacks.progress import LogProgress

__all__ = ["DivergenceGuard", "IndexRefresh", "LogProgress", "RetrievalEvaluator"]
