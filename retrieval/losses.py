"""Contrastive losses for dense retrieval (DPR, Contriever), and the interface a new one implements.

A loss sees what every training path of :class:`lightning_modules.ContrastiveRetriever` builds alike
(in-batch, gathered from every rank, with a MoCo queue, through GradCache): the scores of each query
against every candidate, each query's target column and the candidates left out of its denominator."""

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


class ContrastiveLoss:
    """The retrieval loss of ContrastiveRetriever, chosen in the config with ``class_path``:

        model:
          init_args:
            loss:
              class_path: my_losses.Hinge      # any importable subclass
              init_args: {margin: 0.2}

    ``__call__(scores, targets, exclude)`` -> a scalar loss to minimise, differentiable in ``scores``.
        scores: (B, N) each query against every candidate (its positive, hard negatives, the other queries'
            passages, those of other ranks with ``negatives.gather``, the MoCo queue); cosine or dot, not
            divided by any temperature.
        targets: (B,) the column of each query's positive.
        exclude: (B, N) bool or None: candidates to leave out for query i (copies of its own positives, the
            batch's keys under MoCo); never its target.
    A subclass that is also a ``torch.nn.Module`` has its parameters trained with the encoders (a learnt
    temperature, say) and saved in checkpoints.
    """

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(scores, targets, exclude)")


class InfoNCE(ContrastiveLoss):
    """DPR / InfoNCE with temperature tau (:func:`contrastive_loss`):
    L = -1/B sum_i log( exp(s(q_i, p_i+)/tau) / sum_j exp(s(q_i, p_j)/tau) )."""

    def __init__(self, temperature: float = 0.05):
        if temperature <= 0:
            raise ValueError(f"InfoNCE: temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
        return contrastive_loss(scores, targets, self.temperature, exclude)

    def __repr__(self) -> str:
        return f"InfoNCE(temperature={self.temperature})"


def in_batch_accuracy(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The fraction of queries whose top-scoring candidate (excluded ones left out) is their positive."""
    with torch.no_grad():
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        return scores.argmax(1).eq(targets).float().mean()
