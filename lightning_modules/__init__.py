"""One LightningModule per method; each reads as a short sequence of calls into the libraries."""

from lightning_modules.bm25_retriever import BM25Retriever
from lightning_modules.contrastive_retriever import ContrastiveRetriever
from lightning_modules.hybrid_retriever import HybridRetriever
from lightning_modules.query_enhanced_retriever import QueryEnhancedRetriever
from lightning_modules.rag_eval import RAGEvaluator
from lightning_modules.replug_lsr import ReplugLSR
from lightning_modules.retrobust import RetRobust
from lightning_modules.score import SCoRe
from lightning_modules.search_r1 import SearchR1
from lightning_modules.self_correct_eval import SelfCorrectEvaluator

__all__ = ["BM25Retriever", "ContrastiveRetriever", "HybridRetriever", "QueryEnhancedRetriever",
           "RAGEvaluator", "ReplugLSR", "RetRobust", "SCoRe", "SearchR1", "SelfCorrectEvaluator"]
