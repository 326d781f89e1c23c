"""The retriever's side of REPLUG LSR: its scores s(d, x), what its index is built from, how it is searched during
training, what a checkpoint keeps of the index, its QA metrics, and the checks that a run's depths fit the corpus.

- :func:`retriever_scores`: s(d, x), the dot product of normalised embeddings (cosine), with gradient;
- :func:`corpus_index`, :func:`stored_index`: the exact index of the corpus; with a frozen passage encoder (Atlas's
  variant) its embeddings never change, so they are written once to an on-disk store keyed by everything that
  changes the numbers, and reused by later runs;
- :func:`retrieve_excluding`: the top k of each input without its excluded passages (the LM set-up's own passage);
- :class:`IndexWeights` and :func:`swapped_weights`: with a trained passage encoder, the weights the current index
  was encoded with, kept for a checkpoint written between two refreshes and re-encoded by the resumed run;
- :func:`gold_metrics`: nDCG and recall of the gold passage at ``eval_k`` (QA);
- :func:`check_depths`: every depth the run retrieves at, plus the excluded passages, fits in the corpus;
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from retrieval.embeddings_store import EmbeddingsStore, write_embeddings
from retrieval.encoders import Encoder
from retrieval.index import DenseIndex
from retrieval.lsr import module_fingerprint, settings_fingerprint, tokenizer_fingerprint
from retrieval.metrics import evaluate
from retrieval.search import DenseRetriever

PROBE = "REPLUG LSR embeddings store probe"
Hits = list[list[tuple[str, float]]]   # per input, its top k (doc id, score)


def retriever_scores(q_encoder: Encoder, passage_encoder: Encoder, inputs: list[str], documents: list[list[str]],
                     query_max_length: int, passage_max_length: int, train_passage_encoder: bool,
                     device: torch.device) -> torch.Tensor:
    """(B, K) s(d, x) = E_q(x) . E_p(d) of re-encoded queries and documents (unit vectors: the cosine), with
    gradient into the query encoder, and into the passage encoder when it is trained (the shared one: then through
    both sides)."""
    tokenize = lambda enc, texts, n: {k: v.to(device) for k, v in enc.tokenize(texts, n).items()}  # noqa: E731
    q = q_encoder(**tokenize(q_encoder, inputs, query_max_length))                                   # (B, H)
    with torch.set_grad_enabled(torch.is_grad_enabled() and train_passage_encoder):
        flat = [d for docs in documents for d in docs]
        p = passage_encoder(**tokenize(passage_encoder, flat, passage_max_length))                   # (B*K, H)
    return torch.einsum("bh,bkh->bk", q, p.view(len(inputs), -1, p.shape[-1]))


def corpus_index(passages: dict[str, str], encoder: Encoder, encode: Callable[[list[str]], torch.Tensor],
                 directory: str | Path | None = None, max_length: int = 256, batch_size: int = 64, rank: int = 0,
                 world_size: int = 1, barrier: Callable[[], None] | None = None) -> DenseIndex:
    """An exact index of ``passages`` ({id: text}) embedded by ``encode``: in memory, or (``directory`` given, for a
    frozen encoder) through :func:`stored_index`."""
    ids, texts = list(passages), list(passages.values())
    if directory is None:
        return DenseIndex(encoder.dim).add(ids, encode(texts))
    return stored_index(directory, encoder, max_length, ids, texts, encode, batch_size, rank, world_size, barrier)


def stored_index(directory: str | Path, encoder: Encoder, max_length: int, ids: list[str], texts: list[str],
                 encode: Callable[[list[str]], torch.Tensor], batch_size: int, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] | None = None) -> DenseIndex:
    """An exact index of ``texts`` from the store ``directory/<key>``, encoded first where the store is not complete
    (shards of 512: an interrupted encoding resumes from the last complete shard; with ``world_size`` > 1 every
    rank writes its shards, then ``barrier``). The key holds the encoder's weights, tokenizer, pooling and
    truncation, the corpus texts, and the embedding of a probe text, which stands for everything else that changes
    the numbers (precision, ...)."""
    probe = encode([PROBE]).tolist()
    key = settings_fingerprint(module_fingerprint(encoder.model), tokenizer_fingerprint(encoder.tokenizer),
                               encoder.pooling, max_length, settings_fingerprint(texts), probe)
    root = Path(directory) / key
    write_embeddings(root, ids, texts, encode, encoder.dim, shard_size=512, batch_size=batch_size, rank=rank,
                     world_size=world_size)
    if world_size > 1 and barrier is not None:
        barrier()
    return DenseIndex.from_store(EmbeddingsStore.open(root))


def retrieve_excluding(searcher: DenseRetriever, inputs: list[str], k: int,
                       exclude: list[list[str]] | None = None) -> Hits:
    """Top-k (doc id, score) of each input, without the input's excluded ids (searched k + the most excluded deep)."""
    exclude = exclude or [[] for _ in inputs]
    extra = max((len(e) for e in exclude), default=0)
    hits = searcher.search(inputs, k + extra)
    out = []
    for i, (row, skip) in enumerate(zip(hits, exclude)):
        row = [h for h in row if h[0] not in set(skip)][:k]
        if len(row) < k:
            raise ValueError(f"ReplugLSR: input {i} got {len(row)} passages from an index of {len(searcher.index)}, "
                             f"fewer than the {k} needed (loss.top_k / replug.k / eval_k)")
        out.append(row)
    return out


def gold_metrics(ids: list[str], gold_ids: list[str | None], hits, eval_k: int, stage: str) -> tuple[dict, int]:
    """nDCG@eval_k and recall@eval_k of each question's gold passage (questions without one left out), and how
    many questions they average over."""
    gold = {q: {g: 1} for q, g in zip(ids, gold_ids) if g is not None}
    if not gold:
        return {}, 0
    run = {q: dict(row[:eval_k]) for q, row in zip(ids, hits) if q in gold}
    m = evaluate(run, gold, ndcg_at=(eval_k,), recall_at=(eval_k,))
    metrics = {f"{stage}/ndcg@{eval_k}": m[f"ndcg@{eval_k}"], f"{stage}/gold_recall@{eval_k}": m[f"recall@{eval_k}"]}
    return metrics, len(gold)


class IndexWeights:
    """With a trained passage encoder the index is refreshed every T steps (callbacks.IndexRefresh): a checkpoint
    written between two refreshes also holds the encoder weights the current index was encoded with (one more copy
    of the encoder; none in a checkpoint written at a refresh), which the resumed run re-encodes the corpus with, so
    that it retrieves what the uninterrupted run did."""

    KEY = "replug_lsr_index_weights"

    def __init__(self):
        self.at_refresh: dict[str, torch.Tensor] | None = None   # the weights the current index was encoded with
        self.resumed: dict[str, torch.Tensor] | None = None      # those a checkpoint brought back

    def refreshed(self, model: torch.nn.Module) -> None:
        self.at_refresh = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(self, checkpoint: dict, model: torch.nn.Module) -> None:
        if self.at_refresh is not None:
            now = model.state_dict()
            if any(not torch.equal(v, now[k]) for k, v in self.at_refresh.items()):
                checkpoint[self.KEY] = self.at_refresh

    def take_resumed(self) -> dict[str, torch.Tensor] | None:
        weights, self.resumed = self.resumed, None
        return weights


@contextmanager
def swapped_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """``model`` with ``weights`` inside the block, its own (copied back in place, so an optimizer keeps its
    parameters) after."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(own)


def check_depths(depths: dict[str, int], corpus_size: int, splits: dict, corpus: str | None) -> None:
    """Every depth in ``depths`` ({option: k}), plus the passages excluded per query (the LM task's own passage),
    fits in the corpus; answer-recall@5 too where the rows have answers (QA)."""
    rows = [r for split in splits.values() for r in split]
    extra = max((len(r.get("exclude") or []) for r in rows), default=0)
    if any("answers" in r for r in rows):
        depths = {**depths, "answer_recall@5 (QA evaluation)": 5}
    for name, k in depths.items():
        if k + extra > corpus_size:
            excluded = f" + {extra} excluded passage(s) per query" if extra else ""
            raise ValueError(f"ReplugLSR.{name}={k}{excluded} is more than the {corpus_size} passages of the corpus "
                             f"{corpus}; set it to {corpus_size - extra} or less")
