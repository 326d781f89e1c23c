"""Contrastive losses for dense retrieval (DPR, Contriever)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(queries: torch.Tensor, keys: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """(B, H) x (N, H) -> (B, N) scores: ``dot`` is E_Q(q)^T E_P(p) (DPR); ``cosine`` normalises first."""
    if kind == "cosine":
        queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    elif kind != "dot":
        raise ValueError(f"unknown similarity {kind!r}; expected 'dot' or 'cosine'")
    return queries @ keys.T


def contrastive_loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """DPR / InfoNCE loss: for each query i, -log softmax(scores[i] / temperature)[targets[i]], averaged.

        L = -1/B sum_i log( exp(s(q_i, p_i+)/tau) / sum_j exp(s(q_i, p_j)/tau) )

    ``scores`` (B, N) holds each query against every candidate: its positive, its hard negatives, the
    other queries' passages (in-batch negatives) and any extra keys (a MoCo queue). ``exclude`` (B, N)
    bool marks candidates to leave out of query i's denominator: other copies of its own positives
    (false negatives), never its target."""
    logits = scores / temperature
    if exclude is not None:
        if exclude.gather(1, targets[:, None]).any():
            raise ValueError("contrastive_loss: a target is marked as excluded")
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)
