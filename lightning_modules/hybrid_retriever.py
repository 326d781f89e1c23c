"""HybridRetriever: BM25 (bm25s) and a dense encoder fused into one ranking, optionally with a PageRank
prior over a link graph. Evaluation-only (nothing to train): ``python train.py --config
configs/hybrid_scifact.yaml`` runs ``test``.

  1. encode corpus and queries with the dense encoder (test_step, dataloaders 0 and 1)
  2. BM25 top ``fusion.depth`` and dense top ``fusion.depth`` per query (retrieval.bm25, retrieval.index)
  3. fuse: reciprocal rank fusion or a weighted sum of normalised scores (retrieval.fusion)
  4. optionally mix in PageRank computed on ``prior.link_graph`` (retrieval.pagerank)
"""

from __future__ import annotations

import lightning as L

from callbacks.retrieval_eval import RetrievalEvaluator
from retrieval.bi_encoder import build_encoder
from retrieval.bm25 import BM25
from retrieval.fusion import mix_prior, reciprocal_rank_fusion, weighted_fusion
from retrieval.index import DenseIndex
from retrieval.pagerank import pagerank, read_edge_list
from training.settings import as_settings, save_settings
from retrieval.settings import (BM25Settings, EncoderSettings, FusionSettings, IndexSettings, PriorSettings)


class HybridRetriever(L.LightningModule):
    """Args:
        encoder: the dense encoder (e.g. an exported DPR model folder; retrieval.settings.EncoderSettings).
        similarity: ``cosine`` (embeddings L2-normalised) or ``dot``.
        bm25: BM25's ``k1``, ``b``, ``stemmer``, ``stopwords``.
        fusion: ``method`` (``rrf`` or ``weighted``), ``weights`` [bm25, dense], ``normalization`` (``minmax`` /
            ``zscore``, weighted only), ``k_rrf`` (the RRF constant), ``depth`` (candidates from each system).
        index: the faiss index for the dense side (``factory``, ``parameters``).
        prior: a PageRank prior: ``link_graph`` (an edge-list file, source<TAB>target doc ids; None: off),
            ``weight``, ``damping``, ``log``.
        eval_k: ranking depth kept for evaluation.
    """

    evaluation_only = True

    def __init__(self, encoder: EncoderSettings = EncoderSettings(), similarity: str = "cosine",
                 bm25: BM25Settings = BM25Settings(), fusion: FusionSettings = FusionSettings(),
                 index: IndexSettings = IndexSettings(), prior: PriorSettings = PriorSettings(), eval_k: int = 100):
        super().__init__()
        save_settings(self, ignore=())
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}; expected 'dot' or 'cosine'")
        self.settings = as_settings(encoder, EncoderSettings)
        self.bm25, self.fusion = as_settings(bm25, BM25Settings), as_settings(fusion, FusionSettings)
        self.index_settings, self.prior = as_settings(index, IndexSettings), as_settings(prior, PriorSettings)
        self.encoder = build_encoder(self.settings, similarity == "cosine")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        s = self.settings                                                                        # 1.
        max_length = s.corpus_max_length if dataloader_idx == 0 else s.query_max_length
        inputs = {k: v.to(self.device) for k, v in self.encoder.tokenize(batch["texts"], max_length).items()}
        return {"ids": batch["ids"], "texts": batch["texts"], "embeddings": self.encoder(**inputs).float().cpu()}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        b, f, p = self.bm25, self.fusion, self.prior
        bm25 = BM25(corpus["ids"], corpus["texts"], k1=b.k1, b=b.b, stemmer=b.stemmer, stopwords=b.stopwords)  # 2.
        sparse = {q: dict(h) for q, h in zip(queries["ids"], bm25.search(queries["texts"], f.depth))}
        index = DenseIndex(corpus["embeddings"].shape[1], self.index_settings.factory, self.index_settings.parameters)
        index.add(corpus["ids"], corpus["embeddings"])
        dense = {q: dict(h) for q, h in zip(queries["ids"], index.search(queries["embeddings"], f.depth))}
        if f.method == "rrf":                                                                    # 3.
            run = reciprocal_rank_fusion([sparse, dense], f.k_rrf, f.weights)
        else:
            run = weighted_fusion([sparse, dense], f.weights, f.normalization)
        if p.link_graph:                                                                         # 4.
            prior = pagerank(read_edge_list(p.link_graph), nodes=corpus["ids"], damping=p.damping)
            run = mix_prior(run, prior, p.weight, log_prior=p.log)
        return {q: dict(list(docs.items())[:k]) for q, docs in run.items()}

    def configure_optimizers(self):
        return None

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]
