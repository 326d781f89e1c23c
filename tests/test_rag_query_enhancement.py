"""HyDE and LameR (hand-computed vector mean and query augmentation, real BM25/encoder/LM), and the
passage retrievers (BM25, dense, random) behind the RAG pipeline."""

from __future__ import annotations

import pytest
import torch

from training.models import load_causal_lm
from generation.rag import TextGenerator
from retrieval.encoders import Encoder
from retrieval.query_enhancement import hyde_documents, hyde_search, hyde_vectors, lamer_drafts, lamer_query, lamer_search
from retrieval.search import make_retriever

IDS = ["d0", "d1", "d2", "d3"]
TEXTS = ["Paris is the capital of France.", "Hamlet was written by William Shakespeare.",
         "The Moon landing happened in 1969.", "Mount Everest is the highest mountain."]
POOL = dict(zip(IDS, TEXTS))


def test_hyde_vector_is_mean_with_query_by_hand():
    table = {"q": [1.0, 0.0], "d1": [0.0, 1.0], "d2": [2.0, 2.0]}

    def encode(texts):  # a fixed lookup standing for E_P, so the mean can be checked by hand
        return torch.tensor([table[t] for t in texts])

    # with the query: ((1,0) + (0,1) + (2,2)) / 3 = (1, 1); paper's form without it: ((0,1) + (2,2)) / 2 = (1, 1.5)
    torch.testing.assert_close(hyde_vectors(encode, ["q"], [["d1", "d2"]]), torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(hyde_vectors(encode, ["q"], [["d1", "d2"]], include_query=False), torch.tensor([[1.0, 1.5]]))
    with pytest.raises(ValueError, match="no hypothetical documents"):
        hyde_vectors(encode, ["q"], [[]], include_query=False)


def test_hyde_with_real_encoder_and_index(tiny_bert_dir):
    enc = Encoder(tiny_bert_dir, normalize=True, max_length=32)
    search = make_retriever("dense", POOL, encoder=enc)
    docs = [["The capital of France is Paris.", "France's capital city."]]
    vec = hyde_vectors(search.encode, ["capital of france"], docs)
    e = enc.encode(["capital of france", *docs[0]], show_progress=False)
    torch.testing.assert_close(vec[0], e.mean(0), atol=1e-5, rtol=1e-5)
    ranking = search.search_vectors(vec, 4)[0]
    scores = (enc.encode(TEXTS, show_progress=False) @ vec[0]).tolist()
    assert [d for d, _ in ranking] == [IDS[i] for i in sorted(range(4), key=lambda i: -scores[i])]


def test_lamer_query_by_hand():
    assert lamer_query("who wrote hamlet", ["Shakespeare", " William Shakespeare "]) == \
        "who wrote hamlet Shakespeare who wrote hamlet William Shakespeare"
    assert lamer_query("q", ["", "  "]) == "q"


def test_lamer_and_hyde_with_tiny_lm_and_bm25(tiny_llama_dir):
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    gen = TextGenerator(model, tok, max_new_tokens=4)
    bm25 = make_retriever("bm25", POOL)
    queries = ["who wrote hamlet", "capital of france"]
    ranking, augmented = lamer_search(bm25, gen, queries, k=3, num_candidates=2)
    drafts = lamer_drafts(gen, queries, [[TEXTS[IDS.index(d)] for d, _ in row] for row in bm25.search(queries, 2)])
    assert augmented == [lamer_query(q, d) for q, d in zip(queries, drafts)]
    assert ranking == bm25.search(augmented, 3)
    docs = hyde_documents(TextGenerator(model, tok, max_new_tokens=3, do_sample=True), queries, num_docs=3)
    assert [len(d) for d in docs] == [3, 3]
    with pytest.raises(ValueError, match="dense retriever"):
        hyde_search(bm25, gen, queries, 3)


def test_hyde_search_is_documents_then_mean_vector_then_index(tiny_bert_dir, tiny_llama_dir):
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    gen = TextGenerator(model, tok, max_new_tokens=3)  # greedy: the same documents on every call
    dense = make_retriever("dense", POOL, encoder=Encoder(tiny_bert_dir, normalize=True, max_length=32))
    queries = ["who wrote hamlet", "capital of france"]
    ranking, docs = hyde_search(dense, gen, queries, 3, num_docs=2)
    assert docs == hyde_documents(gen, queries, 2)
    assert ranking == dense.search_vectors(hyde_vectors(dense.encode, queries, docs), 3)
    assert ranking != dense.search(queries, 3)  # the documents moved the search vector


def test_random_retriever_is_seeded_per_query_and_bm25_matches_library():
    r = make_retriever("random", POOL, seed=1)
    a = r.search(["q1", "q2"], 2)
    assert r.search(["q2", "q1"], 2) == a[::-1]  # independent of batch order
    assert all(len(row) == 2 and len({d for d, _ in row}) == 2 and all(s == 0.0 for _, s in row) for row in a)
    from retrieval.bm25 import BM25

    assert make_retriever("bm25", POOL).search(["hamlet"], 2) == BM25(IDS, TEXTS).search(["hamlet"], 2)
    with pytest.raises(ValueError, match="unknown retriever"):
        make_retriever("tfidf", POOL)
    with pytest.raises(ValueError, match="needs an encoder"):
        make_retriever("dense", POOL)
