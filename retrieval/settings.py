"""The settings of the retrievers, grouped so every method names them alike
(``--model.init_args.encoder.name_or_path``, ``...encoder.pooling``, ``...encoder.precision``,
``...bm25.k1``, ``...index.factory``). A method gives its own default instance; a config overrides single
fields and keeps the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.models import DEFAULT_ENCODER
from training.precision import PRECISIONS


@dataclass
class EncoderSettings:
    """Args:
        name_or_path: a local folder, a hub name, or ``all-MiniLM-L6-v2`` (shipped as a package).
        pooling: ``mean`` or ``cls``.
        query_max_length / passage_max_length: truncation of queries and passages, in tokens.
        precision: compute precision (``auto``, ``fp32``, ``bf16``; None: ``$RAGKIT_PRECISION``).
        eval_passage_max_length: truncation of passages when a whole corpus is encoded (evaluation, an index);
            None: ``passage_max_length``.
        dropout: the transformer's dropout during training (off by default: the SciFact demo was measured
            without it).
        dtype: the weights' dtype (``float32``, ``bfloat16``, ``float16``; None keeps the checkpoint's).
    """
    name_or_path: str = DEFAULT_ENCODER
    pooling: str = "mean"
    query_max_length: int = 64
    passage_max_length: int = 256
    precision: str | None = None
    eval_passage_max_length: int | None = None
    dropout: bool = False
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"encoder.pooling {self.pooling!r}: expected 'mean' or 'cls'")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"encoder.precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"encoder.dtype {self.dtype!r}: expected a torch dtype name such as 'float32' or "
                             "'bfloat16'")

    @property
    def corpus_max_length(self) -> int:
        """Truncation of passages when a corpus is encoded for search."""
        return self.eval_passage_max_length or self.passage_max_length


@dataclass
class Negatives:
    """Where a contrastive loss finds its negatives besides the batch's own passages.

    Args:
        gather: with DDP/FSDP, score each query against the passages of every rank (the global batch);
            gradients flow back to each rank's own slice (training.distributed).
        queue_size / momentum: MoCo (Contriever): keys come from a momentum encoder
            theta_k <- m theta_k + (1 - m) theta_q, and the last ``queue_size`` keys are negatives (0: off).
        queue_in_batch: with the queue, also score the other keys of the current batch (MoCo leaves them out:
            they join the queue after the step).
    """
    gather: bool = False
    queue_size: int = 0
    momentum: float = 0.999
    queue_in_batch: bool = False

    def __post_init__(self) -> None:
        if self.queue_size < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"negatives.queue_size must be >= 0 and negatives.momentum in [0, 1), "
                             f"got {self.queue_size}, {self.momentum}")


@dataclass
class GradCacheSettings:
    """GradCache (retrieval.gradcache): embed in chunks of ``chunk_size`` so the contrastive batch is limited by
    the loss, not by activation memory (None: off). It uses manual optimization: set
    ``trainer.gradient_clip_val`` to null and clip with ``clip_val``; gradient accumulation is not available."""
    chunk_size: int | None = None
    clip_val: float | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"gradcache.chunk_size must be >= 1 (or null), got {self.chunk_size}")


@dataclass
class IndexSettings:
    """The faiss index a dense retriever ranks with: any ``index_factory`` string (exact ``Flat`` by default)
    and its search parameters (``nprobe=32``, ``efSearch=128``)."""
    factory: str = "Flat"
    parameters: str | None = None


@dataclass
class BM25Settings:
    """BM25 (bm25s): ``k1`` saturation, ``b`` length normalisation (Pyserini's BEIR values), Snowball
    ``stemmer`` and ``stopwords`` language (None: none)."""
    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str | None = "en"


@dataclass
class FusionSettings:
    """How a hybrid ranking is fused (retrieval.fusion).

    Args:
        method: ``rrf`` (reciprocal rank fusion) or ``weighted`` (a weighted sum of normalised scores).
        weights: [bm25, dense] (None: equal).
        normalization: ``minmax`` or ``zscore`` (weighted only).
        k_rrf: the RRF constant.
        depth: candidates taken from each system.
    """
    method: str = "rrf"
    weights: list[float] | None = None
    normalization: str = "minmax"
    k_rrf: float = 60.0
    depth: int = 100

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "weighted"):
            raise ValueError(f"unknown fusion.method {self.method!r}; expected 'rrf' or 'weighted'")
        if self.weights is not None and len(self.weights) != 2:
            raise ValueError(f"fusion.weights: expected [bm25, dense], got {self.weights}")


@dataclass
class PriorSettings:
    """A PageRank prior (retrieval.pagerank) mixed into a ranking: ``link_graph`` is an edge-list file
    (source<TAB>target doc ids; None: no prior), ``weight`` its share, ``damping`` PageRank's, ``log``
    whether log-PageRank is mixed in."""
    link_graph: str | None = None
    weight: float = 0.1
    damping: float = 0.85
    log: bool = True
