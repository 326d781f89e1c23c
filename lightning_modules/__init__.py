"""One LightningModule per method; each reads as a short sequence of calls into the libraries."""

from lightning_modules.bm25_retriever import BM25Retriever
from lightning_modules.contrastive_retriever import ContrastiveRetriever

__all__ = ["BM25Retriever", "ContrastiveRetriever"]

from lightning_modules.query_enhanced_retriever import QueryEnhancedRetriever  # noqa: E402
from lightning_modules.rag_eval import RAGEvaluator  # noqa: E402

__all__ += ["QueryEnhancedRetriever", "RAGEvaluator"]

from lightning_modules.hybrid_retriever import HybridRetriever  # noqa: E402

__all__ += ["HybridRetriever"]
