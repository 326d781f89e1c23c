"""BM25Retriever: BM25 (bm25s) evaluated through the same CLI, datamodule and evaluator as the dense
retrievers. It has no parameters to train: run it with ``test`` (the default for evaluation-only modules)."""

from __future__ import annotations

import lightning as L

from callbacks.retrieval_eval import RetrievalEvaluator
from retrieval.bm25 import BM25
from retrieval.settings import BM25Settings
from training.settings import as_settings, save_settings


class BM25Retriever(L.LightningModule):
    """Args: bm25: ``k1``, ``b`` (saturation and length normalisation), ``stemmer`` (Snowball language or
    None), ``stopwords``; eval_k: ranking depth kept for evaluation."""

    evaluation_only = True

    def __init__(self, bm25: BM25Settings = BM25Settings(), eval_k: int = 100):
        super().__init__()
        save_settings(self, ignore=())
        self.bm25 = as_settings(bm25, BM25Settings)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"ids": batch["ids"], "texts": batch["texts"]}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        b = self.bm25
        bm25 = BM25(corpus["ids"], corpus["texts"], k1=b.k1, b=b.b, stemmer=b.stemmer, stopwords=b.stopwords)
        return {q: dict(hits) for q, hits in zip(queries["ids"], bm25.search(queries["texts"], k))}

    def configure_optimizers(self):
        return None

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]
