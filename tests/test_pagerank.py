"""PageRank against values solved by hand from PR(A) = (1-d)/N + d * sum_{B->A} PR(B)/L(B), and against networkx."""

import networkx as nx
import pytest

from retrieval.beir import DataFormatError
from retrieval.pagerank import pagerank, read_edge_list


def test_three_page_cycle_by_hand():
    # A->B, A->C, B->C, C->A; d = 0.85, N = 3, so (1-d)/N = 0.05; L(A) = 2, L(B) = L(C) = 1.
    #   a = 0.05 + 0.85 c
    #   b = 0.05 + 0.85 a/2 = 0.05 + 0.425 a
    #   c = 0.05 + 0.85 (a/2 + b) = 0.05 + 0.425 a + 0.0425 + 0.36125 a = 0.0925 + 0.78625 a
    #   a = 0.05 + 0.85 (0.0925 + 0.78625 a) = 0.128625 + 0.6683125 a  ->  a = 0.128625 / 0.3316875
    a = 0.128625 / 0.3316875
    b = 0.05 + 0.425 * a
    c = 0.0925 + 0.78625 * a
    pr = pagerank([("A", "B"), ("A", "C"), ("B", "C"), ("C", "A")], damping=0.85, tol=1e-12)
    assert pr == pytest.approx({"A": a, "B": b, "C": c}, abs=1e-9)
    assert a + b + c == pytest.approx(1.0)


def test_dangling_node_spreads_its_rank_by_hand():
    # A->B, B has no out-link: its rank is spread over both pages. d = 0.5, N = 2:
    #   a = 0.25 + 0.5 * (b/2);  b = 0.25 + 0.5 * (a + b/2);  with a + b = 1:  1.25 a = 0.5  ->  a = 0.4, b = 0.6
    pr = pagerank([("A", "B")], damping=0.5, tol=1e-12)
    assert pr == pytest.approx({"A": 0.4, "B": 0.6}, abs=1e-9)


def test_isolated_nodes_and_duplicates():
    # C has no links at all; duplicate edges count once. d = 0.5, N = 3, (1-d)/N = 1/6; A<->B, C dangling:
    #   c = 1/6 + 0.5 * c/3  ->  c (1 - 1/6) = 1/6  ->  c = 0.2;  a = b = 0.4
    pr = pagerank([("A", "B"), ("B", "A"), ("A", "B")], nodes=["C"], damping=0.5, tol=1e-12)
    assert pr == pytest.approx({"A": 0.4, "B": 0.4, "C": 0.2}, abs=1e-9)


def test_matches_networkx_on_a_random_graph():
    g = nx.gnp_random_graph(60, 0.08, seed=3, directed=True)
    edges = [(str(u), str(v)) for u, v in g.edges]
    ours = pagerank(edges, nodes=[str(n) for n in g.nodes], damping=0.85, tol=1e-12)
    ref = nx.pagerank(g, alpha=0.85, tol=1e-13, max_iter=1000)
    assert ours == pytest.approx({str(k): v for k, v in ref.items()}, abs=1e-8)


def test_edge_list_errors_name_file_line_field(tmp_path):
    path = tmp_path / "links.tsv"
    path.write_text("# comment\na\tb\nc\n")
    with pytest.raises(DataFormatError, match=r"links.tsv, line 3: expected 2 fields"):
        read_edge_list(path)
    path.write_text("a\tb\n\tc\n")
    with pytest.raises(DataFormatError, match=r"line 2, field 'source'"):
        read_edge_list(path)
    path.write_text("a\tb\nb\ta\n")
    assert read_edge_list(path) == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError, match="damping"):
        pagerank([("a", "b")], damping=1.0)
    with pytest.raises(RuntimeError, match="no convergence"):
        pagerank([("a", "b"), ("b", "a"), ("a", "a")], damping=0.99, tol=1e-15, max_iter=3)
