"""ReplugLSR: train a dense retriever with a frozen LM's preferences (REPLUG LSR, Shi et al. 2023).

Training step, for a batch of B inputs x with gold continuations y:
  1. retrieve:  top-k passages D' of each x from the current index (refreshed every T steps by
                callbacks.IndexRefresh; the query's own passage excluded in the LM set-up)
  2. LM scores: log P_LM(y | d, x) for every d in D' from the frozen LM (retrieval.lsr cache: only
                (x, d, y) never scored before reach the LM)
  3. retriever: s(d, x) = cosine of the re-encoded query and documents, with gradient
  4. loss:      KL(P_R || Q) (or KL(Q || P_R)), P_R = softmax(s / gamma), Q = softmax(log P_LM / beta)
  5. update:    the retriever's encoder(s) only (Lightning's optimizer step)

With ``train_passage_encoder=False`` (Atlas's query-side variant) the passage encoder is frozen, the index
never goes stale, and its embeddings can be kept on disk (``embeddings_dir``).
Test (and validation): QA: nDCG@10 against the gold passage, answer-recall@1/@5 and EM/F1 of the REPLUG
ensemble over the top ``replug_k``; language modelling: perplexity and bits per byte of y without
retrieval and with the REPLUG ensemble. The initial retriever is evaluated by testing the untrained module.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from training.models import DEFAULT_GENERATOR, load_causal_lm
from training.precision import lm_precision
from generation.prompts import PromptFormat, prompt_format
from generation.qa_metrics import answer_recall_at_k, exact_match, f1_score
from generation.rag import answer_questions
from generation.replug import replug_score
from generation.scoring import score_triples
from training.schedule import warmup_then_decay
from training.rng_state import load_rng_state, save_rng_state
from training.sharding import full_parameters, shard
from retrieval.embeddings_store import EmbeddingsStore, write_embeddings
from retrieval.encoders import DEFAULT_ENCODER, Encoder
from retrieval.index import DenseIndex
from retrieval.lsr import (DIRECTIONS, LMScoreCache, lm_logliks, lsr_loss, module_fingerprint, settings_fingerprint,
                           tokenizer_fingerprint)
from retrieval.metrics import evaluate
from retrieval.search import DenseRetriever


def adam(params) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam, lr 2e-5."""
    return torch.optim.Adam(params, lr=2e-5)


class FrozenLM:
    """The LM scorer, held outside the module tree: it is not in the state dict, the optimizer or DDP, and
    Lightning's train()/eval() switching never reaches it (it stays in eval mode, without gradients)."""

    def __init__(self, model, tokenizer):
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.fingerprint = f"{module_fingerprint(model)}-{tokenizer_fingerprint(tokenizer)}"
        if lm_precision(model) != "fp32":  # bf16 scores differ from fp32 ones: a separate cache key (fp32 keys unchanged)
            self.fingerprint += f"-{lm_precision(model)}"

    def to(self, device) -> "FrozenLM":
        self.model.to(device)
        return self


def check_depths(hp, stage: str, corpus_size: int, splits: dict, corpus: str | None) -> None:
    """Every depth the run retrieves at (``top_k`` in training; ``eval_k``, ``replug_k`` and answer-recall@5
    in evaluation), plus the passages excluded per query (the LM task's own passage), fits in the corpus."""
    rows = [r for split in splits.values() for r in split]
    extra = max((len(r.get("exclude") or []) for r in rows), default=0)
    depths = {"eval_k": hp.eval_k, "replug_k": hp.replug_k}
    if any("answers" in r for r in rows):
        depths["answer_recall@5 (QA evaluation)"] = 5
    if stage == "fit":
        depths["top_k"] = hp.top_k
    for name, k in depths.items():
        if k + extra > corpus_size:
            excluded = f" + {extra} excluded passage(s) per query" if extra else ""
            raise ValueError(f"ReplugLSR.{name}={k}{excluded} is more than the {corpus_size} passages of the corpus "
                             f"{corpus}; set it to {corpus_size - extra} or less")


class ReplugLSR(L.LightningModule):
    """Args:
        retriever: the bi-encoder's initial weights (``all-MiniLM-L6-v2`` or a folder, e.g. a DPR export).
        lm: the frozen LM that supervises (``smollm2-135m-instruct`` or a folder / hub name).
        train_passage_encoder: True: one shared encoder for queries and passages, all trained (the paper;
            the index goes stale: refresh it with callbacks.IndexRefresh); False: Atlas's variant, a trained
            query encoder and a frozen passage encoder, both starting from ``retriever``.
        pooling, query_max_length, passage_max_length: the encoders' pooling and truncation (passages are
            truncated alike in the index and in training, so both score the same text).
        top_k: retrieved documents per input, the D' of the loss (paper: 20).
        gamma / beta: temperatures of P_R and Q (paper: 0.1 and 0.1).
        direction: ``p_r||q`` (arXiv, default) or ``q||p_r`` (NAACL, official code); see retrieval.lsr.lsr_loss.
        prompt: how (d, x) becomes the LM's prompt: a ``generation.prompts.PRESETS`` name or a PromptFormat.
        target_prefix: put before y (``" "`` after a prompt ending in ``Answer:``).
        lm_reduction: ``sum`` (log P_LM(y | d, x), the paper) or ``mean`` (per-token mean).
        lm_batch_size / lm_max_length / lm_dtype: LM scoring batch size, prompt truncation, weights' dtype.
        score_cache: SQLite file of LM scores (resumable across runs; None: score every time).
        embeddings_dir: with a frozen passage encoder, keep its corpus embeddings under this directory
            (keyed by the encoder's weights, settings and the corpus texts) instead of re-encoding per run.
        optimizer / warmup: optimizer factory (paper: Adam 2e-5) and linear warm-up fraction (<1) or steps.
        eval_k: ranking depth for nDCG. replug_k / replug_temperature: the REPLUG ensemble in evaluation
            (replug_k = 0: retrieval metrics only; temperature None = gamma, the retriever's own P_R).
        max_new_tokens / gen_batch_size: REPLUG generation (QA).
        encode_batch_size: texts per batch when encoding the corpus.
        lm_precision: the LM's compute precision for scoring and generation (``auto``, ``fp32``, ``bf16``; None:
            ``$RAGKIT_PRECISION``): the encoders' rule, see training.precision.set_precision.
    """

    def __init__(self, retriever: str = DEFAULT_ENCODER, lm: str = DEFAULT_GENERATOR, train_passage_encoder: bool = True,
                 pooling: str = "mean", query_max_length: int = 64, passage_max_length: int = 256, top_k: int = 20,
                 gamma: float = 0.1, beta: float = 0.1, direction: str = "p_r||q",
                 prompt: str | PromptFormat = "few_shot", target_prefix: str = " ", lm_reduction: str = "sum",
                 lm_batch_size: int = 8, lm_max_length: int | None = None, lm_dtype: str = "float32",
                 score_cache: str | None = None, embeddings_dir: str | None = None, optimizer: OptimizerCallable = adam,
                 warmup: float = 0.1, eval_k: int = 10, replug_k: int = 10, replug_temperature: float | None = None,
                 max_new_tokens: int = 24, gen_batch_size: int = 8, encode_batch_size: int = 64,
                 lm_precision: str | None = None):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
        if gamma <= 0 or beta <= 0:
            raise ValueError(f"gamma and beta must be positive, got {gamma}, {beta}")
        if top_k < 1 or lm_reduction not in ("sum", "mean"):
            raise ValueError(f"top_k must be >= 1 and lm_reduction 'sum' or 'mean', got {top_k}, {lm_reduction!r}")
        self.save_hyperparameters(ignore=["optimizer", "prompt"])
        self.optimizer_factory = optimizer
        self.prompt = prompt_format(prompt)
        self.passage_encoder: Encoder | None = None
        self.query_encoder: Encoder | None = None
        self.frozen: FrozenLM | None = None
        self.score_cache: LMScoreCache | None = None
        self.retrieval_index: DenseIndex | None = None
        self.searcher: DenseRetriever | None = None
        self._lm_totals: list[torch.Tensor] = []
        # the shared encoder's weights the current index was encoded with (see on_save_checkpoint), and those a
        # checkpoint brought back for on_fit_start
        self._index_weights: dict[str, torch.Tensor] | None = None
        self._resume_index_weights: dict[str, torch.Tensor] | None = None

    # -- models: built once, here, so FSDP/large models can be sharded and checkpoints restore into them ------
    def configure_model(self) -> None:
        if self.passage_encoder is not None:
            return
        hp = self.hparams
        self.passage_encoder = Encoder(hp.retriever, hp.pooling, normalize=True, max_length=hp.passage_max_length)
        if not hp.train_passage_encoder:
            self.query_encoder = Encoder(hp.retriever, hp.pooling, normalize=True, max_length=hp.query_max_length)
            self.passage_encoder.requires_grad_(False)
        model, tokenizer = load_causal_lm(hp.lm, dtype=hp.lm_dtype, device="cpu", precision=hp.get("lm_precision"))
        self.frozen = FrozenLM(model, tokenizer)
        if hp.score_cache:
            prompt_id = settings_fingerprint(self.prompt, hp.target_prefix, hp.lm_reduction, hp.lm_max_length)
            self.score_cache = LMScoreCache(hp.score_cache, self.frozen.fingerprint, prompt_id)
        # FSDP2 (ModelParallelStrategy): the trained encoder (shared, or the query encoder) block by block. The frozen
        # passage encoder and the frozen LM stay whole on every rank: neither has gradients or optimizer state to
        # shard, and each runs a different number of forwards per rank (the passage encoder encodes this rank's
        # shards of the corpus; the LM scores only what the score cache misses), which sharded weights, gathered
        # by collectives in every forward, would deadlock on.
        shard(self, self.q_encoder.model)

    @property
    def q_encoder(self) -> Encoder:
        return self.passage_encoder if self.query_encoder is None else self.query_encoder

    def encode_passages(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, H) corpus embeddings (callbacks.IndexRefresh calls this). Under FSDP2 with whole parameters:
        ranks encode shares of the corpus of different sizes, without waiting on each other."""
        with full_parameters(self.passage_encoder.model):
            return self.passage_encoder.encode(texts, batch_size, self.hparams.passage_max_length, show_progress=False)

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        with full_parameters(self.q_encoder.model):
            return self.q_encoder.encode(texts, batch_size, self.hparams.query_max_length, show_progress=False)

    # -- the index ----------------------------------------------------------------------------------------
    def attach_corpus(self, passages: dict[str, str]) -> None:
        """Search ``passages`` ({id: text}) through the one search layer, which reads the current index at
        every call (IndexRefresh swaps it in)."""
        self.searcher = DenseRetriever(passages, index=lambda: self.retrieval_index, encode_queries=self.encode_queries)

    def build_index(self, passages: dict[str, str] | None = None) -> DenseIndex:
        """Encode the corpus (default: the datamodule's) with the current passage encoder into an exact index
        (the same index IndexRefresh builds); with a frozen passage encoder and ``embeddings_dir``, through an
        on-disk store written once (resumable) and reused by later runs."""
        hp = self.hparams
        if passages is None:
            dm = self.trainer.datamodule
            passages = {d: dm.passages[d] for d in dm.doc_ids}
        ids, texts = list(passages), list(passages.values())
        encode = partial(self.encode_passages, batch_size=hp.encode_batch_size)
        if hp.embeddings_dir and not hp.train_passage_encoder:
            enc = self.passage_encoder
            # the embedding of a probe text stands for everything else that changes the numbers (precision, ...)
            probe = encode(["REPLUG LSR embeddings store probe"]).tolist()
            key = settings_fingerprint(module_fingerprint(enc.model), tokenizer_fingerprint(enc.tokenizer), enc.pooling,
                                       hp.passage_max_length, settings_fingerprint(texts), probe)
            root = Path(hp.embeddings_dir) / key
            distributed = self._trainer is not None and self.trainer.world_size > 1
            # shards of 512: an interrupted encoding resumes from the last complete shard
            write_embeddings(root, ids, texts, encode, enc.dim, shard_size=512, batch_size=hp.encode_batch_size,
                             rank=self.global_rank, world_size=self.trainer.world_size if distributed else 1)
            if distributed:
                self.trainer.strategy.barrier("lsr_embeddings")
            index = DenseIndex.from_store(EmbeddingsStore.open(root))
        else:
            index = DenseIndex(self.passage_encoder.dim).add(ids, encode(texts))
        self.retrieval_index = index
        self.on_index_refresh(index)
        return index

    def on_index_refresh(self, index: DenseIndex) -> None:
        """An index encoded with the current weights was swapped in (by build_index or callbacks.IndexRefresh):
        with a trained passage encoder, keep a copy of those weights for the checkpoints written before the next
        refresh (on_save_checkpoint)."""
        if self.hparams.train_passage_encoder:
            self._index_weights = {k: v.detach().clone() for k, v in self.passage_encoder.model.state_dict().items()}

    @contextmanager
    def _passage_weights(self, weights: dict[str, torch.Tensor]):
        """The passage encoder with ``weights`` inside the block, its own (copied back in place, so the optimizer
        keeps its parameters) after."""
        model = self.passage_encoder.model
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def _prepare(self, rebuild_index: bool) -> None:
        self.frozen.to(self.device)
        if self.searcher is None:
            self.attach_corpus(self.trainer.datamodule.passages)
        if self.retrieval_index is None or (rebuild_index and self.hparams.train_passage_encoder):
            self.build_index()

    def setup(self, stage: str) -> None:
        """A retrieval depth deeper than the corpus fails here, before fit, not at the first test batch after it."""
        dm = self.trainer.datamodule
        if dm is not None and getattr(dm, "passages", None):
            check_depths(self.hparams, stage, len(dm.passages), getattr(dm, "splits", {}), dm.hparams.get("corpus"))

    def on_fit_start(self) -> None:
        weights, self._resume_index_weights = self._resume_index_weights, None
        if weights is not None and self.retrieval_index is None:
            # resumed from a checkpoint written between two index refreshes: the interrupted run was searching an
            # index encoded with older weights (saved in the checkpoint); rebuild that one, not one from the
            # restored weights, so that the resumed run retrieves what the uninterrupted one did
            if self.searcher is None:
                self.attach_corpus(self.trainer.datamodule.passages)
            with self._passage_weights(weights):
                self.build_index()
        self._prepare(rebuild_index=False)

    def on_validation_start(self) -> None:
        self._prepare(rebuild_index=False)

    def on_test_start(self) -> None:
        self._prepare(rebuild_index=True)   # the passage encoder may have changed since the last refresh

    # -- library calls, one per step ----------------------------------------------------------------------
    @torch.no_grad()
    def retrieve(self, inputs: list[str], k: int, exclude: list[list[str]] | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (doc id, score) of each input from the current index, without the input's excluded ids."""
        exclude = exclude or [[] for _ in inputs]
        extra = max((len(e) for e in exclude), default=0)
        hits = self.searcher.search(inputs, k + extra)
        out = []
        for i, (row, skip) in enumerate(zip(hits, exclude)):
            row = [h for h in row if h[0] not in set(skip)][:k]
            if len(row) < k:
                raise ValueError(f"ReplugLSR: input {i} got {len(row)} passages from an index of "
                                 f"{len(self.retrieval_index)}, fewer than the {k} needed (top_k / replug_k / eval_k)")
            out.append(row)
        return out

    def lm_scores(self, inputs: list[str], documents: list[list[str]], targets: list[str]) -> torch.Tensor:
        """(B, K) log P_LM(y | d, x) from the frozen LM, through the score cache."""
        hp = self.hparams
        score = partial(score_triples, self.frozen.model, self.frozen.tokenizer, prompt_format=self.prompt,
                        reduction=hp.lm_reduction, batch_size=hp.lm_batch_size, max_length=hp.lm_max_length)
        # the LM computes in its own dtype and precision (lm_dtype, lm_precision), whatever the trainer's precision:
        # the cache's key holds the weights and the LM's precision, not the trainer's autocast context
        with torch.autocast(self.device.type, enabled=False):
            return lm_logliks(inputs, documents, [hp.target_prefix + y for y in targets], score, self.score_cache)

    def retriever_scores(self, inputs: list[str], documents: list[list[str]]) -> torch.Tensor:
        """(B, K) cosine s(d, x) of re-encoded queries and documents, with gradient into the trained encoder(s)."""
        hp = self.hparams
        tokenize = lambda enc, texts, n: {k: v.to(self.device) for k, v in enc.tokenize(texts, n).items()}  # noqa: E731
        q = self.q_encoder(**tokenize(self.q_encoder, inputs, hp.query_max_length))                       # (B, H)
        with torch.set_grad_enabled(torch.is_grad_enabled() and hp.train_passage_encoder):
            flat = [d for docs in documents for d in docs]
            p = self.passage_encoder(**tokenize(self.passage_encoder, flat, hp.passage_max_length))         # (B*K, H)
        return torch.einsum("bh,bkh->bk", q, p.view(len(inputs), -1, p.shape[-1]))

    # -- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if self.searcher is None:
            self._prepare(rebuild_index=False)
        hits = self.retrieve(batch["inputs"], hp.top_k, batch["exclude"])                  # 1. current index
        docs = [[self.searcher.text(d) for d, _ in row] for row in hits]
        logliks = self.lm_scores(batch["inputs"], docs, batch["targets"]).to(self.device)  # 2. frozen LM, cached
        scores = self.retriever_scores(batch["inputs"], docs)                               # 3. with gradient
        loss = lsr_loss(scores, logliks, hp.gamma, hp.beta, hp.direction)                   # 4. KL
        with torch.no_grad():
            agree = (scores.argmax(-1) == logliks.argmax(-1)).float().mean()
        stats = {"train/loss": loss, "train/top1_agreement": agree}
        if self.score_cache is not None and self.score_cache.hits + self.score_cache.misses:
            stats["train/lm_cache_hit_rate"] = self.score_cache.hits / (self.score_cache.hits + self.score_cache.misses)
        self.log_dict(stats, prog_bar=True, batch_size=len(hits))
        return loss                                                                         # 5. Lightning steps

    def configure_optimizers(self):
        return warmup_then_decay(self, self.optimizer_factory, self.hparams.warmup)

    # -- checkpoints: the RNG state too (encoder dropout), so a resumed run equals an uninterrupted one --------
    # With a trained passage encoder the index is refreshed every T steps (callbacks.IndexRefresh): a checkpoint
    # written between two refreshes also holds the encoder weights the current index was encoded with (one more
    # copy of the encoder; none in a checkpoint written at a refresh), which on_fit_start re-encodes the corpus with.
    INDEX_WEIGHTS = "replug_lsr_index_weights"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_rng_state(checkpoint)
        if self._index_weights is not None:
            now = self.passage_encoder.model.state_dict()
            if any(not torch.equal(v, now[k]) for k, v in self._index_weights.items()):
                checkpoint[self.INDEX_WEIGHTS] = self._index_weights

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_rng_state(checkpoint)
        self._resume_index_weights = checkpoint.get(self.INDEX_WEIGHTS)

    # -- evaluation -----------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict, stage: str) -> None:
        hp = self.hparams
        k = max(hp.eval_k, hp.replug_k, 5 if "answers" in batch else 1)
        hits = self.retrieve(batch["inputs"], k, batch["exclude"])                          # 1. current retriever
        docs = [[self.searcher.text(d) for d, _ in row] for row in hits]
        if "answers" in batch:
            self._qa_metrics(batch, hits, docs, stage)                                      # 2. QA
        else:
            self._lm_totals.append(self._lm_sums(batch, hits, docs))                        # 2. LM

    def _qa_metrics(self, batch: dict, hits, docs, stage: str) -> None:
        hp = self.hparams
        n = len(hits)
        metrics = {f"{stage}/answer_recall@{k}": answer_recall_at_k(docs, batch["answers"], k) for k in (1, 5)}
        gold = {q: {g: 1} for q, g in zip(batch["ids"], batch["gold_ids"]) if g is not None}
        if gold:
            run = {q: dict(row[:hp.eval_k]) for q, row in zip(batch["ids"], hits) if q in gold}
            ndcg = evaluate(run, gold, ndcg_at=(hp.eval_k,), recall_at=(hp.eval_k,))
            self.log_dict({f"{stage}/ndcg@{hp.eval_k}": ndcg[f"ndcg@{hp.eval_k}"],
                           f"{stage}/gold_recall@{hp.eval_k}": ndcg[f"recall@{hp.eval_k}"]}, batch_size=len(gold))
        if hp.replug_k:
            temperature = hp.replug_temperature or hp.gamma
            out = answer_questions("replug", self.frozen.model, self.frozen.tokenizer, batch["inputs"],
                                   [d[:hp.replug_k] for d in docs], [[s for _, s in row[:hp.replug_k]] for row in hits],
                                   prompt_format=self.prompt, max_new_tokens=hp.max_new_tokens,
                                   replug_temperature=temperature, batch_size=hp.gen_batch_size)
            metrics[f"{stage}/replug_em"] = sum(map(exact_match, out.answers, batch["answers"])) / n
            metrics[f"{stage}/replug_f1"] = sum(map(f1_score, out.answers, batch["answers"])) / n
        self.log_dict(metrics, batch_size=n)

    @torch.no_grad()
    def _lm_sums(self, batch: dict, hits, docs) -> torch.Tensor:
        """[log-lik without retrieval, log-lik with REPLUG, tokens of y, bytes of y] summed over the batch."""
        hp = self.hparams
        model, tok = self.frozen.model, self.frozen.tokenizer
        targets = [hp.target_prefix + y for y in batch["targets"]]
        none = score_triples(model, tok, [None] * len(targets), batch["inputs"], targets, prompt_format=self.prompt,
                             batch_size=hp.lm_batch_size, max_length=hp.lm_max_length)
        replug = replug_score(model, tok, batch["inputs"], [d[:hp.replug_k] for d in docs],
                              [[s for _, s in row[:hp.replug_k]] for row in hits], targets, prompt_format=self.prompt,
                              temperature=hp.replug_temperature or hp.gamma, batch_size=hp.lm_batch_size)
        tokens = sum(len(ids) for ids in tok(targets, add_special_tokens=False)["input_ids"])
        nbytes = sum(len(t.encode("utf-8")) for t in targets)
        return torch.tensor([none.sum().item(), replug.sum().item(), tokens, nbytes], dtype=torch.float64)

    def _log_lm(self, stage: str) -> None:
        if not self._lm_totals:
            return
        total = torch.stack(self._lm_totals).sum(0).to(self.device)
        if self.trainer.world_size > 1:
            total = self.all_gather(total).sum(0)
        ll_none, ll_replug, tokens, nbytes = total.tolist()
        self._lm_totals = []
        self.log_dict({f"{stage}/ppl_no_retrieval": math.exp(-ll_none / tokens),
                       f"{stage}/ppl_replug": math.exp(-ll_replug / tokens),
                       f"{stage}/bpb_no_retrieval": -ll_none / (math.log(2) * nbytes),
                       f"{stage}/bpb_replug": -ll_replug / (math.log(2) * nbytes)}, sync_dist=False)

    @torch.inference_mode()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @torch.inference_mode()
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_lm("val")

    def on_test_epoch_end(self) -> None:
        self._log_lm("test")

    # -- export ---------------------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Hugging Face + sentence-transformers folders (retrieval.encoders.Encoder.save, as the DPR export):
        the shared encoder at ``path``, or ``path/query`` and ``path/passage`` (Atlas variant)."""
        path = Path(path)
        if self.query_encoder is None:
            self.passage_encoder.save(path)
        else:
            self.query_encoder.save(path / "query")
            self.passage_encoder.save(path / "passage")
