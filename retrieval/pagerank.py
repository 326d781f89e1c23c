"""PageRank as a query-independent prior for ranking (docs/methods/bm25_hybrid.md).

    PR(A) = (1 - d) / N + d * sum_{B -> A} PR(B) / L(B)

iterated from PR = 1/N until the L1 change between two iterations is below ``tol``. ``L(B)`` is the
number of distinct out-links of B. A page with no out-links (a dangling node) spreads its rank evenly
over all N pages, as in the original paper's treatment and networkx's default, so the ranks sum to 1.
The matrix-vector products are scipy sparse; nothing is computed per edge in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retrieval.beir import DataFormatError, open_text


def read_edge_list(path: str | Path) -> list[tuple[str, str]]:
    """Edges ``source<TAB>target`` (or whitespace-separated), one per line; ``#`` starts a comment line.
    A malformed line raises :class:`DataFormatError` naming the file, line and field."""
    edges = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts]
            if len(parts) != 2:
                raise DataFormatError(path, number, None, f"expected 2 fields (source, target), got {len(parts)}")
            for field, value in zip(("source", "target"), parts):
                if not value:
                    raise DataFormatError(path, number, field, "empty node id")
            edges.append((parts[0], parts[1]))
    if not edges:
        raise DataFormatError(path, None, None, "no edges")
    return edges


def pagerank(edges: Iterable[tuple[str, str]], nodes: Sequence[str] | None = None, damping: float = 0.85,
             tol: float = 1e-10, max_iter: int = 1000) -> dict[str, float]:
    """PageRank of every node of the graph given by ``edges`` (source, target).

    ``nodes`` adds pages without any link (e.g. every document of a corpus), so each one gets a rank.
    Duplicate edges count once; self-links are kept (a page may link to itself). Raises if the power
    iteration has not converged after ``max_iter`` iterations."""
    if not 0 <= damping < 1:
        raise ValueError(f"pagerank: damping must be in [0, 1), got {damping}")
    edges = list(edges)
    names = list(dict.fromkeys([*(nodes or []), *(n for e in edges for n in e)]))
    if not names:
        raise ValueError("pagerank: empty graph (no nodes and no edges)")
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    pairs = np.array(sorted({(index[s], index[t]) for s, t in edges}), dtype=np.int64).reshape(-1, 2)
    out_degree = np.bincount(pairs[:, 0], minlength=n).astype(np.float64)       # L(B)
    # M[a, b] = 1 / L(b) for an edge b -> a, so (M @ pr)[a] = sum_{b -> a} pr[b] / L(b).
    M = sp.csr_matrix((1.0 / out_degree[pairs[:, 0]], (pairs[:, 1], pairs[:, 0])), shape=(n, n))
    dangling = out_degree == 0
    pr = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        new = (1 - damping) / n + damping * (M @ pr + pr[dangling].sum() / n)
        change = np.abs(new - pr).sum()
        pr = new
        if change < tol:
            return dict(zip(names, pr.tolist()))
    raise RuntimeError(f"pagerank: no convergence to tol={tol} in {max_iter} iterations (last change {change:.3g})")
