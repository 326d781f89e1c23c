"""HybridRetriever: BM25 (bm25s) and a dense encoder fused into one ranking, optionally with a PageRank
prior over a link graph. Evaluation-only (nothing to train): ``python train.py --config
configs/hybrid_scifact.yaml`` runs ``test``.

  1. encode corpus and queries with the dense encoder (test_step, dataloaders 0 and 1)
  2. BM25 top ``depth`` and dense top ``depth`` per query (retrieval.bm25, retrieval.index)
  3. fuse: reciprocal rank fusion or a weighted sum of normalised scores (retrieval.fusion)
  4. optionally mix in PageRank computed on ``link_graph`` (retrieval.pagerank)
"""

from __future__ import annotations

import lightning as L

from callbacks.retrieval_eval import RetrievalEvaluator
from retrieval.bm25 import BM25
from retrieval.encoders import DEFAULT_ENCODER, Encoder
from retrieval.fusion import mix_prior, reciprocal_rank_fusion, weighted_fusion
from retrieval.index import DenseIndex
from retrieval.pagerank import pagerank, read_edge_list


class HybridRetriever(L.LightningModule):
    """Args:
        model_name_or_path / pooling / normalize: the dense encoder (e.g. an exported DPR model folder).
        query_max_length / passage_max_length: truncation when encoding.
        k1 / b / stemmer: BM25.
        fusion: ``rrf`` or ``weighted``; weights: [bm25, dense]; normalization: ``minmax`` / ``zscore``
            (weighted only); k_rrf: the RRF constant; depth: candidates taken from each system.
        index_factory / index_parameters: the faiss index for the dense side.
        link_graph: an edge-list file (source<TAB>target doc ids) for a PageRank prior; prior_weight,
            damping, log_prior: how it is computed and mixed in.
    """

    evaluation_only = True

    def __init__(self, model_name_or_path: str = DEFAULT_ENCODER, pooling: str = "mean", normalize: bool = True,
                 query_max_length: int = 64, passage_max_length: int = 256, k1: float = 0.9, b: float = 0.4,
                 stemmer: str | None = "english", fusion: str = "rrf", weights: list[float] | None = None,
                 normalization: str = "minmax", k_rrf: float = 60.0, depth: int = 100, index_factory: str = "Flat",
                 index_parameters: str | None = None, link_graph: str | None = None, prior_weight: float = 0.1,
                 damping: float = 0.85, log_prior: bool = True, eval_k: int = 100):
        super().__init__()
        self.save_hyperparameters()
        if fusion not in ("rrf", "weighted"):
            raise ValueError(f"unknown fusion {fusion!r}; expected 'rrf' or 'weighted'")
        if weights is not None and len(weights) != 2:
            raise ValueError(f"weights: expected [bm25, dense], got {weights}")
        self.encoder = Encoder(model_name_or_path, pooling, normalize, passage_max_length)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        hp = self.hparams                                                                        # 1.
        max_length = hp.passage_max_length if dataloader_idx == 0 else hp.query_max_length
        inputs = {k: v.to(self.device) for k, v in self.encoder.tokenize(batch["texts"], max_length).items()}
        return {"ids": batch["ids"], "texts": batch["texts"], "embeddings": self.encoder(**inputs).float().cpu()}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        hp = self.hparams
        bm25 = BM25(corpus["ids"], corpus["texts"], k1=hp.k1, b=hp.b, stemmer=hp.stemmer)        # 2.
        sparse = {q: dict(h) for q, h in zip(queries["ids"], bm25.search(queries["texts"], hp.depth))}
        index = DenseIndex(corpus["embeddings"].shape[1], hp.index_factory, hp.index_parameters)
        index.add(corpus["ids"], corpus["embeddings"])
        dense = {q: dict(h) for q, h in zip(queries["ids"], index.search(queries["embeddings"], hp.depth))}
        if hp.fusion == "rrf":                                                                   # 3.
            run = reciprocal_rank_fusion([sparse, dense], hp.k_rrf, hp.weights)
        else:
            run = weighted_fusion([sparse, dense], hp.weights, hp.normalization)
        if hp.link_graph:                                                                        # 4.
            prior = pagerank(read_edge_list(hp.link_graph), nodes=corpus["ids"], damping=hp.damping)
            run = mix_prior(run, prior, hp.prior_weight, log_prior=hp.log_prior)
        return {q: dict(list(docs.items())[:k]) for q, docs in run.items()}

    def configure_optimizers(self):
        return None

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]
