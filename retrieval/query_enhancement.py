"""Query enhancement with an LM: HyDE and LameR.

HyDE (Gao et al., 2023): the LM writes K hypothetical documents for the query; they are encoded with the
passage encoder and the search vector is their mean, together with the query's own embedding as in the
original implementation (``include_query=True``):

    v(q) = (E(q) + sum_{k=1..K} E(p~_k(q))) / (K + 1)          sim(q, p) = v(q)^T E(p)

(``include_query=False`` gives the paper's formula sum_k E(p~_k(q)) / K.)

LameR (Shen et al., 2023): retrieve candidates for the query, let the LM draft answers from them, then
retrieve again with the query augmented by the drafts, each draft appended to a copy of the query:

    q' = q a_1 q a_2 ... q a_n

It works with any engine, BM25 included. The LM is injected as ``generate(messages) -> texts`` (e.g.
``generation.rag.TextGenerator``), the engine is a :class:`retrieval.search.Retriever` (HyDE needs a
:class:`retrieval.search.DenseRetriever`: it searches with vectors), read at every call so both see an
index refreshed during training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Generate = Callable[[Sequence[str]], list[str]]
Hits = list[list[tuple[str, float]]]

HYDE_TEMPLATES = {
    # the prompts of the HyDE repository (web search and SciFact)
    "web": "Please write a passage to answer the question.\nQuestion: {query}\nPassage:",
    "scifact": "Please write a scientific paper passage to support/refute the claim.\nClaim: {query}\nPassage:",
}
LAMER_TEMPLATE = ("Give the question and some passages that may contain its answer. Write a short answer to the "
                  "question.\n\n{candidates}\n\nQuestion: {query}")



@dataclass
class HyDE:
    """HyDE's settings: ``num_docs`` sampled hypothetical documents of at most ``doc_tokens`` tokens at
    ``temperature``, the prompt ``template`` (a key of ``HYDE_TEMPLATES`` or a template with ``{query}``), and
    whether the query's own embedding joins the mean (``include_query``, as in the original code)."""
    num_docs: int = 4
    doc_tokens: int = 128
    temperature: float = 0.7
    template: str = "web"
    include_query: bool = True

    def __post_init__(self) -> None:
        if self.template not in HYDE_TEMPLATES and "{query}" not in self.template:
            raise ValueError(f"hyde.template {self.template[:60]!r}: neither a known name {sorted(HYDE_TEMPLATES)} "
                             "nor a template with a {query} field")

    @property
    def prompt(self) -> str:
        return HYDE_TEMPLATES.get(self.template, self.template)


@dataclass
class LameR:
    """LameR's settings: ``num_candidates`` first-round passages shown to the LM, ``num_drafts`` greedy answer
    drafts of at most ``draft_tokens`` tokens, the prompt ``template`` (``{candidates}`` and ``{query}``)."""
    num_candidates: int = 5
    num_drafts: int = 1
    draft_tokens: int = 32
    template: str = LAMER_TEMPLATE

def hyde_documents(generate: Generate, queries: Sequence[str], num_docs: int = 4,
                   template: str = HYDE_TEMPLATES["web"]) -> list[list[str]]:
    """``num_docs`` hypothetical documents per query (sample with ``generate`` for diversity)."""
    if num_docs < 1:
        raise ValueError(f"hyde_documents: num_docs must be at least 1, got {num_docs}")
    messages = [template.format(query=q) for q in queries for _ in range(num_docs)]
    texts = generate(messages)
    return [texts[i * num_docs:(i + 1) * num_docs] for i in range(len(queries))]


def hyde_vectors(encode: Callable[[list[str]], torch.Tensor], queries: Sequence[str],
                 documents: Sequence[Sequence[str]], include_query: bool = True) -> torch.Tensor:
    """(Q, H) HyDE search vectors: the mean of the hypothetical documents' embeddings (and of the query's,
    with ``include_query``). ``encode`` is the passage encoder, texts -> (N, H)."""
    if len(queries) != len(documents):
        raise ValueError(f"hyde_vectors: {len(queries)} queries but {len(documents)} document lists")
    groups = [([q] if include_query else []) + list(docs) for q, docs in zip(queries, documents)]
    if any(not g for g in groups):
        raise ValueError("hyde_vectors: a query has no hypothetical documents and include_query=False")
    emb = encode([t for g in groups for t in g])
    out, row = [], 0
    for g in groups:
        out.append(emb[row:row + len(g)].mean(0))
        row += len(g)
    return torch.stack(out)


def lamer_query(query: str, drafts: Sequence[str]) -> str:
    """q' = q a_1 q a_2 ... q a_n (the query alone when there are no drafts)."""
    drafts = [d.strip() for d in drafts if d.strip()]
    return " ".join(f"{query} {d}" for d in drafts) if drafts else query


def lamer_drafts(generate: Generate, queries: Sequence[str], candidates: Sequence[Sequence[str]],
                 num_drafts: int = 1, template: str = LAMER_TEMPLATE) -> list[list[str]]:
    """``num_drafts`` answers per query, drafted by the LM from the candidate passages in the prompt."""
    if len(queries) != len(candidates):
        raise ValueError(f"lamer_drafts: {len(queries)} queries but {len(candidates)} candidate lists")
    messages = []
    for q, cands in zip(queries, candidates):
        block = "\n\n".join(f"Passage {i + 1}: {c}" for i, c in enumerate(cands))
        messages.extend([template.format(candidates=block, query=q)] * num_drafts)
    texts = generate(messages)
    return [texts[i * num_drafts:(i + 1) * num_drafts] for i in range(len(queries))]


def hyde_search(retriever, generate: Generate, queries: Sequence[str], k: int = 100, num_docs: int = 4,
                template: str = HYDE_TEMPLATES["web"], include_query: bool = True) -> tuple[Hits, list[list[str]]]:
    """HyDE: (ranking of the HyDE vectors in the retriever's current index, hypothetical documents)."""
    if not hasattr(retriever, "search_vectors"):
        raise ValueError(f"HyDE searches with embeddings: it needs a dense retriever, not {type(retriever).__name__}")
    docs = hyde_documents(generate, queries, num_docs, template)
    return retriever.search_vectors(hyde_vectors(retriever.encode, queries, docs, include_query), k), docs


def lamer_search(retriever, generate: Generate, queries: Sequence[str], k: int = 100, num_candidates: int = 5,
                 num_drafts: int = 1, template: str = LAMER_TEMPLATE) -> tuple[Hits, list[str]]:
    """LameR: (ranking of the augmented queries, augmented queries)."""
    first = retriever.search(list(queries), num_candidates)
    drafts = lamer_drafts(generate, queries, [[retriever.text(d) for d, _ in row] for row in first], num_drafts,
                          template)
    augmented = [lamer_query(q, ds) for q, ds in zip(queries, drafts)]
    return retriever.search(augmented, k), augmented
