"""The pieces of a contrastive training step besides the loss itself (retrieval.losses): the scores of each
query against every candidate with its target column and the candidates to leave out, and MoCo's momentum
encoder and queue (He et al. 2020; Contriever, Izacard et al. 2022)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from training.distributed import gather_no_grad, global_exclude, global_scores


def contrastive_scores(q: torch.Tensor, p: torch.Tensor, batch: dict, gather: bool = False,
                       queue: torch.Tensor | None = None, queue_in_batch: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, N_global + K) scores, (B,) targets and the (B, N_global + K) bool mask of excluded candidates.

    q: (B, H) queries; p: (N, H) passages laid out [positives | hard negatives] (MoCo: the keys); with
    ``gather`` the passages of every rank join as candidates, then the ``queue`` (K, H) of past keys.
    ``batch["exclude"]`` (B, N) marks copies of a query's own positives (false negatives); it is extended to
    the gathered columns by ``batch["passage_ids"]``. MoCo: l_pos = q . k+ and l_neg = q . queue; the batch's
    other keys are left out unless ``queue_in_batch``."""
    # cosine: embeddings are already normalised, so the dot product is the cosine
    scores, targets, offset = global_scores(q, p, gather, queue)
    exclude = batch.get("exclude")
    if exclude is not None and exclude.shape[1] != scores.shape[1]:
        exclude = global_exclude(exclude, batch["passage_ids"], scores.shape[1], offset, gather)
    if queue is not None and not queue_in_batch:
        batch_keys = torch.zeros_like(scores, dtype=torch.bool)
        batch_keys[:, :scores.shape[1] - queue.shape[0]] = True
        batch_keys[torch.arange(len(targets)), targets] = False
        exclude = batch_keys if exclude is None else exclude | batch_keys
    return scores, targets, exclude


@torch.no_grad()
def momentum_update(key_params: Iterable[torch.Tensor], query_params: Iterable[torch.Tensor], m: float) -> None:
    """MoCo's key encoder: theta_k <- m theta_k + (1 - m) theta_q, in place."""
    for p_k, p_q in zip(key_params, query_params):
        p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, length: torch.Tensor, keys: torch.Tensor) -> None:
    """Write the keys of every rank into the ring buffer ``queue`` (K, H), oldest first overwritten; ``ptr``
    (the next slot) and ``length`` (slots filled) are 0-d tensors updated in place."""
    keys = gather_no_grad(keys.detach()).to(queue.dtype)
    size = queue.shape[0]
    keys = keys[-size:]
    positions = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size
    queue[positions] = keys
    ptr.copy_((ptr + keys.shape[0]) % size)
    length.copy_(torch.clamp(length + keys.shape[0], max=size))
