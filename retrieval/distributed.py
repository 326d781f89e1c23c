"""Cross-device negatives: gather embeddings from every rank so each query is scored against the
global batch, with gradients flowing back to the rank that computed each slice.

Forward: all-gather the (n_r, H) slices of every rank (sizes may differ) into one (sum_r n_r, H)
tensor, the local slice being the local tensor itself. Backward: the gradient of the global tensor
is summed over ranks (all-reduce), and each rank keeps the rows of its own slice. So rank r's
embeddings receive d(sum_s L_s)/d(emb_r): with DDP averaging parameter gradients over W ranks, the
update equals that of one process computing mean_s L_s on the whole batch (the test checks this).
Works with any torch.distributed backend (gloo on CPU, nccl on GPU); without an initialised process
group these functions are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a count over ranks (a collective: every rank must call it); ``value`` itself without a
    process group. The normaliser of a token-mean loss under data parallelism: the loss of the global batch is
    sum_r S_r / N with N = sum_r n_r, and DDP / FSDP average gradients over the W ranks, so rank r must
    return S_r / (N / W) = S_r / mean_r(n_r); dividing by its own n_r weighs a token of a rank with few loss
    tokens more than one of a rank with many."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    out = torch.as_tensor(value).detach().clone().float()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def _sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather needs equal shapes: pad every slice to the largest, then cut the padding away."""
    longest = max(sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank = dist.get_rank()
        sizes = _sizes(x.shape[0], x.device)
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        return _all_gather_padded(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(n_local, ...) -> ((n_global, ...), offset of this rank's slice in it). Differentiable."""
    rank, world_size = world()
    if world_size == 1:
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x), sum(sizes[:rank])


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' slices concatenated in rank order, without gradient (e.g. MoCo keys for the queue)."""
    if world()[1] == 1:
        return x
    return _all_gather_padded(x.detach(), _sizes(x.shape[0], x.device))


def gather_objects(obj) -> list:
    """One picklable object per rank, in rank order ([obj] without a process group)."""
    if world()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def global_scores(q: torch.Tensor, p: torch.Tensor, gather: bool = False,
                  queue: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Scores of the local queries (B, H) against every candidate, and each query's target column.

    Candidates are the passages (N, H) of this rank, or with ``gather`` those of all ranks in rank
    order (gradients flow back through :func:`gather_with_grad`), followed by the ``queue`` (K, H) of
    MoCo keys, if any. Passages are laid out [positives | hard negatives] per rank, so local query i's
    positive is column offset + i. Returns scores (B, N_global + K), targets (B,), offset."""
    keys, offset = gather_with_grad(p) if gather else (p, 0)
    scores = q @ keys.T
    if queue is not None and queue.shape[0] > 0:
        scores = torch.cat([scores, q @ queue.T.to(q.dtype)], dim=1)
    targets = torch.arange(q.shape[0], device=q.device) + offset
    return scores, targets, offset


def global_exclude(exclude: torch.Tensor, passage_ids: list[str], num_columns: int, offset: int,
                   gather: bool = True) -> torch.Tensor:
    """Extend a local false-negative mask (B, N_local) to the gathered columns (B, num_columns).

    Query i's known positives are its target passage and the local passages marked in ``exclude[i]``;
    any other column, on any rank, holding one of those documents is excluded too. Columns beyond the
    gathered passages (a MoCo queue) are never excluded."""
    all_ids = [d for ids in gather_objects(list(passage_ids)) for d in ids]
    out = torch.zeros(exclude.shape[0], num_columns, dtype=torch.bool, device=exclude.device)
    for i in range(exclude.shape[0]):
        positives = {passage_ids[i]} | {passage_ids[j] for j in exclude[i].nonzero().flatten().tolist()}
        for j, d in enumerate(all_ids):
            out[i, j] = d in positives and j != offset + i
    return out
