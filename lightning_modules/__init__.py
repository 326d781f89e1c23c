"""One LightningModule per method; each reads as a short sequence of calls into the libraries."""

from lightning_modules.bm25_retriever import BM25Retriever
from lightning_modules.contrastive_retriever import ContrastiveRetriever

__all__ = ["BM25Retriever", "ContrastiveRetriever"]
