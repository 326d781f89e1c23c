"""ReplugLSR: train a dense retriever with a frozen LM's preferences (REPLUG LSR, Shi et al. 2023).

Training step, for a batch of B inputs x with gold continuations y:
  1. retrieve:  top-k passages D' of each x from the current index (refreshed every T steps by
                callbacks.IndexRefresh; the query's own passage excluded in the LM set-up)
  2. LM scores: log P_LM(y | d, x) for every d in D' from the frozen LM (retrieval.lsr cache: only
                (x, d, y) never scored before reach the LM)
  3. retriever: s(d, x) = cosine of the re-encoded query and documents, with gradient
  4. loss:      KL(P_R || Q) (or KL(Q || P_R)), P_R = softmax(s / gamma), Q = softmax(log P_LM / beta)
  5. update:    the retriever's encoder(s) only (Lightning's optimizer step)

Test (and validation): QA: nDCG@eval_k against the gold passage, answer-recall@1/@5 and EM/F1 of the REPLUG
ensemble over the top ``replug.k``; language modelling: perplexity and bits per byte of y without retrieval and
with the REPLUG ensemble. The initial retriever is evaluated by testing the untrained module. The pieces:
retrieval/lsr.py (loss, cache), retrieval/lsr_lm.py (the frozen LM), retrieval/lsr_retriever.py (index, scores).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from generation.prompts import prompt_format
from retrieval.bi_encoder import build_encoder, encode_texts, export_encoders
from retrieval.encoders import Encoder
from retrieval.index import DenseIndex
from retrieval.lsr import LMScoreCache, LSRLoss, lsr_loss
from retrieval.lsr_lm import (FrozenLM, LMScoring, ReplugEval, lm_metrics, lm_scores, lm_sums, open_score_cache,
                              qa_metrics)
from retrieval.lsr_retriever import (Hits, IndexWeights, check_depths, corpus_index, retrieve_excluding,
                                     retriever_scores, swapped_weights)
from retrieval.search import DenseRetriever
from retrieval.settings import EncoderSettings
from training.rng_state import load_rng_state, save_rng_state
from training.schedule import warmup_then_decay
from training.settings import LM, save_settings
from training.sharding import shard


def adam(params) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam, lr 2e-5."""
    return torch.optim.Adam(params, lr=2e-5)


class ReplugLSR(L.LightningModule):
    """Args:
        encoder: the bi-encoder's initial weights (``all-MiniLM-L6-v2`` or a folder, e.g. a DPR export), pooling and
            truncation (alike in the index and in training, so both score the same text).
        lm: the frozen LM that supervises (``name_or_path``, ``dtype``, compute ``precision``).
        train_passage_encoder: True: one shared encoder, all trained (the paper; refresh the stale index with
            callbacks.IndexRefresh); False: Atlas's variant, a trained query encoder and a frozen passage encoder.
        loss / scoring / replug: retrieval.lsr.LSRLoss (top_k, gamma, beta, direction), retrieval.lsr_lm.LMScoring
            (prompt, target prefix, reduction, batch size, truncation, score cache), retrieval.lsr_lm.ReplugEval.
        embeddings_dir: with a frozen passage encoder, keep its corpus embeddings under this directory (keyed by the
            encoder's weights, settings and the corpus texts) instead of re-encoding them per run.
        encode_batch_size: texts per batch when encoding the corpus. eval_k: ranking depth for nDCG.
        optimizer / warmup: optimizer factory (paper: Adam 2e-5) and linear warm-up fraction (<1) or steps.
    """

    def __init__(self, encoder: EncoderSettings = EncoderSettings(), lm: LM = LM(), train_passage_encoder: bool = True,
                 loss: LSRLoss = LSRLoss(), scoring: LMScoring = LMScoring(), embeddings_dir: str | None = None,
                 encode_batch_size: int = 64, optimizer: OptimizerCallable = adam, warmup: float = 0.1,
                 eval_k: int = 10, replug: ReplugEval = ReplugEval()):
        super().__init__()
        save_settings(self)
        # the groups as dataclasses (hparams hold them as dicts: training.settings.save_settings)
        self.encoder, self.lm, self.loss, self.scoring, self.replug = encoder, lm, loss, scoring, replug
        self.optimizer_factory = optimizer
        self.prompt = prompt_format(scoring.prompt)
        self.passage_encoder: Encoder | None = None
        self.query_encoder: Encoder | None = None
        self.frozen: FrozenLM | None = None
        self.score_cache: LMScoreCache | None = None
        self.retrieval_index: DenseIndex | None = None
        self.searcher: DenseRetriever | None = None
        self.index_weights = IndexWeights()   # a trained passage encoder's weights at the last index refresh
        self._lm_totals: list[torch.Tensor] = []

    # -- models: built once, here, so FSDP/large models can be sharded and checkpoints restore into them ------
    def configure_model(self) -> None:
        if self.passage_encoder is not None:
            return
        enc = self.encoder
        self.passage_encoder = build_encoder(enc, normalize=True, max_length=enc.passage_max_length)
        if not self.hparams.train_passage_encoder:
            self.query_encoder = build_encoder(enc, normalize=True, max_length=enc.query_max_length)
            self.passage_encoder.requires_grad_(False)
        self.frozen = FrozenLM.load(self.lm)
        self.score_cache = open_score_cache(self.frozen, self.scoring, self.prompt)
        # FSDP2: the trained encoder block by block. The frozen passage encoder and LM stay whole on every rank: no
        # gradients or optimizer state to shard, and a different number of forwards per rank (this rank's corpus
        # shards; the score cache's misses), which sharded weights, gathered in every forward, would deadlock on.
        shard(self, self.q_encoder.model)

    @property
    def q_encoder(self) -> Encoder:
        return self.passage_encoder if self.query_encoder is None else self.query_encoder

    def encode_passages(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, H) corpus embeddings (IndexRefresh calls it); under FSDP2 from whole parameters, ranks unsynchronised."""
        return encode_texts(self.passage_encoder, texts, self.encoder.passage_max_length, batch_size)

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return encode_texts(self.q_encoder, texts, self.encoder.query_max_length, batch_size)

    # -- the index ----------------------------------------------------------------------------------------
    def attach_corpus(self, passages: dict[str, str]) -> None:
        """Search ``passages`` ({id: text}) through the one search layer, which reads the current index at
        every call (IndexRefresh swaps it in)."""
        self.searcher = DenseRetriever(passages, index=lambda: self.retrieval_index, encode_queries=self.encode_queries)

    def build_index(self, passages: dict[str, str] | None = None) -> DenseIndex:
        """Encode the corpus (default: the datamodule's) into an exact index (IndexRefresh's); with a frozen passage
        encoder and ``embeddings_dir``, through an on-disk store written once (resumable) and reused by later runs."""
        hp, world = self.hparams, self.trainer.world_size if self._trainer is not None else 1
        if passages is None:
            dm = self.trainer.datamodule
            passages = {d: dm.passages[d] for d in dm.doc_ids}
        encode = partial(self.encode_passages, batch_size=hp.encode_batch_size)
        store = None if hp.train_passage_encoder else hp.embeddings_dir
        self.retrieval_index = index = corpus_index(
            passages, self.passage_encoder, encode, store, self.encoder.passage_max_length, hp.encode_batch_size,
            self.global_rank, world, barrier=lambda: self.trainer.strategy.barrier("lsr_embeddings"))
        self.on_index_refresh(index)
        return index

    def on_index_refresh(self, index: DenseIndex) -> None:
        """An index encoded with the current weights was swapped in (by build_index or callbacks.IndexRefresh):
        with a trained passage encoder, keep a copy of those weights for the checkpoints written before the next
        refresh (on_save_checkpoint)."""
        if self.hparams.train_passage_encoder:
            self.index_weights.refreshed(self.passage_encoder.model)

    def _prepare(self, rebuild_index: bool, resumed_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.frozen.to(self.device)
        if self.searcher is None:
            self.attach_corpus(self.trainer.datamodule.passages)
        if resumed_weights is not None and self.retrieval_index is None:
            # resumed between two index refreshes: rebuild the index the interrupted run was searching (IndexWeights)
            with swapped_weights(self.passage_encoder.model, resumed_weights):
                self.build_index()
        if self.retrieval_index is None or (rebuild_index and self.hparams.train_passage_encoder):
            self.build_index()

    def setup(self, stage: str) -> None:
        """A retrieval depth deeper than the corpus fails here, before fit, not at the first test batch after it."""
        dm = self.trainer.datamodule
        if dm is not None and getattr(dm, "passages", None):
            depths = {"eval_k": self.hparams.eval_k, "replug.k": self.replug.k}
            if stage == "fit":
                depths["loss.top_k"] = self.loss.top_k
            check_depths(depths, len(dm.passages), getattr(dm, "splits", {}), dm.hparams.get("corpus"))

    def on_fit_start(self) -> None:
        self._prepare(rebuild_index=False, resumed_weights=self.index_weights.take_resumed())

    def on_validation_start(self) -> None:
        self._prepare(rebuild_index=False)

    def on_test_start(self) -> None:
        self._prepare(rebuild_index=True)   # the passage encoder may have changed since the last refresh

    # -- library calls, one per step ----------------------------------------------------------------------
    @torch.no_grad()
    def retrieve(self, inputs: list[str], k: int, exclude: list[list[str]] | None = None) -> Hits:
        """Top-k (doc id, score) of each input from the current index, without the input's excluded ids."""
        return retrieve_excluding(self.searcher, inputs, k, exclude)

    def lm_scores(self, inputs: list[str], documents: list[list[str]], targets: list[str]) -> torch.Tensor:
        """(B, K) log P_LM(y | d, x) from the frozen LM, through the score cache."""
        return lm_scores(self.frozen, self.scoring, self.prompt, self.score_cache, inputs, documents, targets)

    def retriever_scores(self, inputs: list[str], documents: list[list[str]]) -> torch.Tensor:
        """(B, K) cosine s(d, x) of re-encoded queries and documents, with gradient into the trained encoder(s)."""
        return retriever_scores(self.q_encoder, self.passage_encoder, inputs, documents, self.encoder.query_max_length,
                                self.encoder.passage_max_length, self.hparams.train_passage_encoder, self.device)

    # -- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.searcher is None:
            self._prepare(rebuild_index=False)
        hits = self.retrieve(batch["inputs"], self.loss.top_k, batch["exclude"])           # 1. current index
        docs = [[self.searcher.text(d) for d, _ in row] for row in hits]
        logliks = self.lm_scores(batch["inputs"], docs, batch["targets"]).to(self.device)  # 2. frozen LM, cached
        scores = self.retriever_scores(batch["inputs"], docs)                               # 3. with gradient
        loss = lsr_loss(scores, logliks, self.loss.gamma, self.loss.beta, self.loss.direction)  # 4. KL
        agree = (scores.detach().argmax(-1) == logliks.argmax(-1)).float().mean()
        stats = {"train/loss": loss, "train/top1_agreement": agree}
        if self.score_cache is not None and self.score_cache.hits + self.score_cache.misses:
            stats["train/lm_cache_hit_rate"] = self.score_cache.hits / (self.score_cache.hits + self.score_cache.misses)
        self.log_dict(stats, prog_bar=True, batch_size=len(hits))
        return loss                                                                         # 5. Lightning steps

    def configure_optimizers(self):
        return warmup_then_decay(self, self.optimizer_factory, self.hparams.warmup)

    # -- checkpoints: the RNG state (encoder dropout) and the index's weights: a resumed run equals an uninterrupted one
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_rng_state(checkpoint)
        self.index_weights.save(checkpoint, self.passage_encoder.model)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_rng_state(checkpoint)
        self.index_weights.resumed = checkpoint.get(IndexWeights.KEY)

    # -- evaluation: QA (retrieval metrics, REPLUG answers) or language modelling (perplexity, bits per byte) --
    @torch.inference_mode()
    def _evaluate(self, batch: dict, stage: str) -> None:
        eval_k, k, temperature = self.hparams.eval_k, self.replug.k, self.replug.temperature or self.loss.gamma
        hits = self.retrieve(batch["inputs"], max(eval_k, k, 5 if "answers" in batch else 1), batch["exclude"])
        docs = [[self.searcher.text(d) for d, _ in row] for row in hits]
        if "answers" in batch:
            for metrics, n in qa_metrics(self.frozen, self.prompt, self.replug, temperature, batch, hits, docs,
                                         eval_k, stage):
                self.log_dict(metrics, batch_size=n)
        else:                                                                           # summed at the epoch's end
            self._lm_totals.append(lm_sums(self.frozen, self.scoring, self.prompt, k, temperature, batch["inputs"],
                                           batch["targets"], hits, docs))

    def _log_lm(self, stage: str) -> None:
        if not self._lm_totals:
            return
        total = torch.stack(self._lm_totals).sum(0).to(self.device)
        if self.trainer.world_size > 1:
            total = self.all_gather(total).sum(0)
        self._lm_totals = []
        self.log_dict(lm_metrics(total, stage), sync_dist=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_lm("val")

    def on_test_epoch_end(self) -> None:
        self._log_lm("test")

    def export(self, path: str | Path) -> None:
        """Hugging Face + sentence-transformers folders: the shared encoder, or ``query/`` and ``passage/``."""
        export_encoders(path, self.passage_encoder, self.query_encoder)
