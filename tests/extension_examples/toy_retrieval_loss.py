"""A retrieval loss added with this one file and a config (docs/extending.md): a margin (hinge) loss over the
scores ContrastiveRetriever builds, in place of the default InfoNCE.

    L = 1/B sum_i  1/|N_i| sum_{j in N_i}  max(0, m - s(q_i, p_i+) + s(q_i, p_j))

N_i: every candidate of query i but its positive and the excluded ones (copies of its own positives).

    model:
      class_path: lightning_modules.ContrastiveRetriever
      init_args:
        loss:
          class_path: extension_examples.toy_retrieval_loss.MarginLoss
          init_args: {margin: 0.3}
"""

from __future__ import annotations

import torch

from retrieval.losses import ContrastiveLoss


class MarginLoss(ContrastiveLoss):
    def __init__(self, margin: float = 0.2):
        self.margin = margin

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
        rows = torch.arange(len(targets), device=scores.device)
        positive = scores[rows, targets][:, None]                                       # (B, 1)
        negatives = torch.ones_like(scores, dtype=torch.bool)
        negatives[rows, targets] = False
        if exclude is not None:
            negatives &= ~exclude
        hinge = (self.margin - positive + scores).clamp(min=0) * negatives              # (B, N)
        return (hinge.sum(1) / negatives.sum(1).clamp(min=1)).mean()
