"""Cross-device negatives: gather embeddings from every rank so each query is scored against the
global batch, with gradients flowing back to the rank that computed each slice.

Forward: all-gather the (n_r, H) slices of every rank (sizes may differ) into one (sum_r n_r, H)
tensor, the local slice being the local tensor itself. Backward: the gradient of the global tensor
is summed over ranks (all-reduce), and each rank keeps the rows of its own slice. So rank r's
embeddings receive d(sum_s L_s)/d(emb_r): with DDP averaging parameter gradients over W ranks, the
update equals that of one process computing mean_s L_s on the whole batch (the test checks this).
Works with any torch.distributed backend (gloo on CPU, nccl on GPU); without an initialised process
group these functions are the identity.

Every tensor collective of the project goes through :func:`all_reduce` / :func:`all_gather` here, which run it on
the device the process group's backend serves (:func:`group_device`) and hand the result back on the input's
device: NCCL serves CUDA tensors only, and a count or a metric built on the CPU (a rollout's loss mask, a reward)
would otherwise stop every rank with "No backend type associated with device type cpu". (Object collectives,
``all_gather_object``, pick their device themselves.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def group_device(group=None) -> torch.device:
    """The device ``group``'s (default: the world's) backend runs collectives on: the CPU when the backend serves
    CPU tensors (gloo, "cpu:gloo,cuda:nccl"), else the current device of the first device type it serves (NCCL:
    ``cuda:<current device>``, the GPU Lightning gave this process)."""
    group = dist.group.WORLD if group is None else group
    # (ProcessGroup._device_types: the device types the group has a backend for; NCCL alone if it is missing)
    types = [d.type for d in getattr(group, "_device_types", [])] or \
        (["cuda"] if dist.get_backend(group) == "nccl" else ["cpu"])
    if "cpu" in types:
        return torch.device("cpu")
    kind = types[0]
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        raise RuntimeError(f"the process group's backend ({dist.get_backend(group)}) runs collectives on {kind} "
                           f"tensors only, and this process has no {kind} device: start the process group with a "
                           f"backend for the devices it has (e.g. gloo on CPU)")
    return torch.device(kind, module.current_device())


def all_reduce(x: torch.Tensor, op=None, group=None) -> torch.Tensor:
    """A new tensor: ``x`` reduced over ``group`` (sum by default), computed on :func:`group_device`, returned on
    ``x``'s device. ``x`` itself is left as it is."""
    out = x.detach().to(group_device(group), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op is None else op, group=group)
    return out.to(x.device)


def all_gather(x: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's ``x`` (same shape on every rank), in rank order, on ``x``'s device; computed on
    :func:`group_device`."""
    device = group_device(group)
    local = x.detach().to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return [p.to(x.device) for p in parts]


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``value`` (a collective: every rank must call it); ``value`` without a process
    group."""
    if world()[1] == 1:
        return value
    return all_reduce(torch.as_tensor(value))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a count over ranks (a collective: every rank must call it); ``value`` itself without a
    process group. The normaliser of a token-mean loss under data parallelism: the loss of the global batch is
    sum_r S_r / N with N = sum_r n_r, and DDP / FSDP average gradients over the W ranks, so rank r must
    return S_r / (N / W) = S_r / mean_r(n_r); dividing by its own n_r weighs a token of a rank with few loss
    tokens more than one of a rank with many."""
    if world()[1] == 1:
        return value
    return all_reduce(torch.as_tensor(value).float()) / dist.get_world_size()


def _sizes(n: int) -> list[int]:
    return [int(s) for s in all_gather(torch.tensor([n], dtype=torch.long))]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather needs equal shapes: pad every slice to the largest, then cut the padding away."""
    longest = max(sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    return torch.cat([p[:n] for p, n in zip(all_gather(padded), sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank = dist.get_rank()
        sizes = _sizes(x.shape[0])
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        return _all_gather_padded(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce(grad.contiguous())[ctx.start:ctx.stop]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(n_local, ...) -> ((n_global, ...), offset of this rank's slice in it). Differentiable."""
    rank, world_size = world()
    if world_size == 1:
        return x, 0
    sizes = _sizes(x.shape[0])
    return _GatherWithGrad.apply(x), sum(sizes[:rank])


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' slices concatenated in rank order, without gradient (e.g. MoCo keys for the queue)."""
    if world()[1] == 1:
        return x
    return _all_gather_padded(x.detach(), _sizes(x.shape[0]))


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
