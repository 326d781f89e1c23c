"""BM25 through bm25s: a score checked against the Lucene formula by hand; hard-negative mining."""

import math
import random

import pytest

from retrieval.bm25 import BM25, mine_hard_negatives


def test_bm25_score_by_hand():
    docs = ["apple banana", "apple apple cherry", "banana cherry durian fig"]
    k1, b = 1.2, 0.75
    bm25 = BM25(["d0", "d1", "d2"], docs, k1=k1, b=b, stemmer=None, stopwords=None)
    hits = dict(bm25.search(["apple"], k=3)[0])
    n, avgdl = 3, (2 + 3 + 4) / 3
    idf = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))           # Lucene IDF, df(apple) = 2

    def score(tf, dl):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    assert hits["d0"] == pytest.approx(score(1, 2), rel=1e-5)
    assert hits["d1"] == pytest.approx(score(2, 3), rel=1e-5)
    assert "d2" not in hits                                     # zero score: no shared term, not returned


def test_stemming_matches_inflections():
    bm25 = BM25(["a", "b"], ["running quickly", "a cat sleeps"])
    assert [d for d, _ in bm25.search(["runs"], k=2)[0]] == ["a"]


def test_mine_hard_negatives_skips_positives():
    ranking = [[("p", 3.0), ("n1", 2.0), ("n2", 1.5), ("n3", 1.0)], [("x", 1.0)]]
    assert mine_hard_negatives(ranking, [{"p"}, {"x"}], num_negatives=2) == [["n1", "n2"], []]
    assert mine_hard_negatives(ranking, [{"p"}, {"x"}], num_negatives=2, skip_top=2) == [["n2", "n3"], []]
    sampled = mine_hard_negatives(ranking, [{"p"}, set()], num_negatives=1, rng=random.Random(0))
    assert sampled[0][0] in {"n1", "n2", "n3"} and sampled[1] == ["x"]


def test_bm25_rejects_bad_input():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25([], [])
    with pytest.raises(ValueError, match="2 ids but 1 texts"):
        BM25(["a", "b"], ["x"])
