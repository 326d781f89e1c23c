"""The one search layer: BM25, dense (encoder + faiss) and random retrieval over a passage collection,
used by retrieval-augmented inference, query enhancement (HyDE, LameR) and the RL search tool.

Every retriever answers ``search(queries, k) -> [[(passage_id, score), ...], ...]`` (best first) and
``retrieve(queries, k) -> [[Passage, ...], ...]`` (the same hits with title, text and score). The text a
retriever indexes, and a prompt shows, is ``retrieval.beir.passage_text`` of the passage: one rule for
every user.

- :class:`BM25Retriever`: :class:`retrieval.bm25.BM25` (bm25s);
- :class:`DenseRetriever`: query embeddings searched in a faiss :class:`retrieval.index.DenseIndex`. The
  index is read at every call, and may be given as a zero-argument callable (e.g.
  ``lambda: module.retrieval_index``), so that when ``callbacks.IndexRefresh`` swaps a new index in during
  training, every user of this retriever searches the new one;
- :class:`RandomRetriever`: k passages drawn uniformly without replacement, score 0 (RetRobust's
  irrelevant-context baseline), seeded by (seed, query text), so it does not depend on batch order.

:func:`make_retriever` builds one by name, as configs and the RAG evaluator do.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.beir import load_corpus, passage_text

RETRIEVERS = ("bm25", "dense", "random")
Hits = list[list[tuple[str, float]]]


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """Title and text as one string (what is indexed and shown in prompts)."""
        return passage_text({"title": self.title, "text": self.text})


def load_passages(corpus: str | Path | Mapping) -> dict[str, Passage]:
    """``{id: Passage}`` from a BEIR ``corpus.jsonl[.gz]``, a ``{id: {"title", "text"}}`` dict, a
    ``{id: text}`` dict (no titles) or a ``{id: Passage}`` dict."""
    docs = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    out = {}
    for doc_id, d in docs.items():
        if isinstance(d, Passage):
            out[doc_id] = d
        elif isinstance(d, str):
            out[doc_id] = Passage(doc_id, "", d)
        else:
            out[doc_id] = Passage(doc_id, (d.get("title") or "").strip(), d["text"])
    if not out:
        raise ValueError("search: the passage collection is empty")
    return out


class Retriever:
    """Base of the retrievers: a passage collection and ``search``; subclasses implement :meth:`search`."""

    kind = "base"

    def __init__(self, passages: str | Path | Mapping):
        self.passages = load_passages(passages)
        self.ids = list(self.passages)

    def text(self, passage_id: str) -> str:
        return self.passages[passage_id].contents

    def texts(self, ids: Sequence[str] | None = None) -> list[str]:
        return [self.text(d) for d in (self.ids if ids is None else ids)]

    def search(self, queries: Sequence[str], k: int) -> Hits:
        raise NotImplementedError(f"{type(self).__name__} must implement search(queries, k)")

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """The hits of :meth:`search` as passages carrying their score."""
        return [[Passage(d, self.passages[d].title, self.passages[d].text, s) for d, s in row]
                for row in self.search(queries, k)]

    def __call__(self, queries: Sequence[str], k: int) -> Hits:
        return self.search(queries, k)


class BM25Retriever(Retriever):
    kind = "bm25"

    def __init__(self, passages: str | Path | Mapping, k1: float = 0.9, b: float = 0.4,
                 stemmer: str | None = "english", stopwords: str | None = "en"):
        from retrieval.bm25 import BM25

        super().__init__(passages)
        self.bm25 = BM25(self.ids, self.texts(), k1=k1, b=b, stemmer=stemmer, stopwords=stopwords)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        return self.bm25.search(list(queries), k)


class DenseRetriever(Retriever):
    """Dense retrieval over the current index.

    Args:
        passages: the collection (see :func:`load_passages`).
        encoder: a :class:`retrieval.encoders.Encoder` (passages and queries) or None when both
            ``index`` and ``encode_queries`` are given.
        index: a :class:`retrieval.index.DenseIndex`, or a zero-argument callable returning the current
            one (read at every search); None builds a ``factory`` index by encoding the passages.
        encode_queries: texts -> (N, H) query embeddings (default: ``encoder`` with ``query_prefix``).
        query_prefix / passage_prefix: e.g. ``"query: "`` / ``"passage: "`` for e5.
    """

    kind = "dense"

    def __init__(self, passages: str | Path | Mapping, encoder=None, index=None,
                 encode_queries: Callable[[list[str]], torch.Tensor] | None = None, factory: str = "Flat",
                 query_prefix: str = "", passage_prefix: str = "", batch_size: int = 64, show_progress: bool = False):
        super().__init__(passages)
        if encoder is None and (index is None or encode_queries is None):
            raise ValueError("DenseRetriever needs an encoder (retrieval.encoders.Encoder), or both an index and "
                             "encode_queries")
        self.encoder, self.batch_size = encoder, batch_size
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self._encode_queries = encode_queries
        if index is None:
            from retrieval.index import DenseIndex

            emb = encoder.encode([passage_prefix + t for t in self.texts()], batch_size=batch_size,
                                 show_progress=show_progress, desc="encode passages")
            index = DenseIndex(emb.shape[1], factory).add(self.ids, emb)
        self._index = index

    @property
    def index(self):
        """The index searched now (the callable's current answer, when one was given)."""
        index = self._index() if callable(self._index) else self._index
        if index is None:
            raise RuntimeError("DenseRetriever: no index yet (the index source returned None; has IndexRefresh run?)")
        return index

    def set_index(self, index) -> None:
        self._index = index

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, H) passage-side embeddings (HyDE encodes its hypothetical documents with this)."""
        if self.encoder is None:
            raise ValueError("DenseRetriever.encode: no passage encoder was given")
        return self.encoder.encode([self.passage_prefix + t for t in texts], batch_size=self.batch_size,
                                   show_progress=False)

    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        if self._encode_queries is not None:
            return self._encode_queries([self.query_prefix + q for q in queries])
        return self.encoder.encode([self.query_prefix + q for q in queries], batch_size=self.batch_size,
                                   show_progress=False)

    def search_vectors(self, vectors: torch.Tensor, k: int) -> Hits:
        return self.index.search(vectors, k)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        if not queries:
            return []
        return self.search_vectors(self.encode_queries(list(queries)), k)


class RandomRetriever(Retriever):
    kind = "random"

    def __init__(self, passages: str | Path | Mapping, seed: int = 0):
        super().__init__(passages)
        self.seed = seed

    def search(self, queries: Sequence[str], k: int) -> Hits:
        return [[(d, 0.0) for d in random.Random(f"{self.seed}-{q}").sample(self.ids, min(k, len(self.ids)))]
                for q in queries]


def make_retriever(kind: str, passages: str | Path | Mapping, *, encoder=None, k1: float = 0.9, b: float = 0.4,
                   seed: int = 0, **dense) -> Retriever:
    """A retriever by name: ``bm25`` (``k1``, ``b``), ``dense`` (``encoder`` and :class:`DenseRetriever`'s
    other arguments) or ``random`` (``seed``)."""
    if kind == "bm25":
        return BM25Retriever(passages, k1=k1, b=b)
    if kind == "dense":
        if encoder is None and "index" not in dense:
            raise ValueError("make_retriever('dense') needs an encoder (retrieval.encoders.Encoder)")
        return DenseRetriever(passages, encoder, **dense)
    if kind == "random":
        return RandomRetriever(passages, seed=seed)
    raise ValueError(f"unknown retriever {kind!r}; expected one of {RETRIEVERS}")


def retriever_from_settings(kind: str, passages: str | Path | Mapping, *, encoder=None, bm25=None,
                            seed: int = 0) -> Retriever:
    """:func:`make_retriever` from grouped settings, the one way the evaluation modules and RetRobust's data
    build their engine: ``bm25`` (a :class:`retrieval.settings.BM25Settings`), ``dense`` (an
    :class:`retrieval.settings.EncoderSettings`: L2-normalised embeddings, passages truncated at
    ``passage_max_length`` tokens, queries at ``query_max_length``) or ``random`` (``seed``)."""
    from dataclasses import asdict

    from retrieval.settings import BM25Settings, EncoderSettings

    if kind == "bm25":
        return BM25Retriever(passages, **asdict(bm25 or BM25Settings()))
    if kind != "dense":
        return make_retriever(kind, passages, seed=seed)
    from retrieval.encoders import Encoder

    s = encoder or EncoderSettings()
    model = Encoder(s.name_or_path, s.pooling, normalize=True, max_length=s.passage_max_length, precision=s.precision)
    return DenseRetriever(passages, model, encode_queries=lambda q: model.encode(
        q, batch_size=64, max_length=s.query_max_length, show_progress=False))
