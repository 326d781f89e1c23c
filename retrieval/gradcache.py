"""GradCache (Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): a contrastive loss over a large batch at the activation memory of one chunk.

For encoders f_e and inputs x_e split into chunks c, with the loss L(u_1, ..., u_E) of the embeddings:
  1. u_e = f_e(x_e) chunk by chunk without an autograd graph (RNG state of each chunk recorded);
  2. L and the embedding gradients g_e = dL/du_e on the whole batch (u_e detached, requires_grad);
     any cross-device gather inside L sends its gradients back through its own backward;
  3. per chunk: re-encode with a graph (same RNG state, so dropout masks match) and backpropagate the
     surrogate sum(f_e(x_c) * g_c), whose parameter gradient is sum_c g_c^T df(x_c)/dtheta = dL/dtheta.
So parameter gradients equal those of the uncached computation up to floating-point error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

Inputs = dict[str, torch.Tensor]


class RandState:
    """The CPU and CUDA RNG states at creation; ``restore()`` resets them, so a re-run draws the same
    dropout masks."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def split_inputs(inputs: Inputs, chunk_size: int) -> list[Inputs]:
    """Split a dict of (B, ...) tensors into chunks of at most ``chunk_size`` rows."""
    if chunk_size < 1:
        raise ValueError(f"gradcache: chunk_size must be >= 1, got {chunk_size}")
    n = next(iter(inputs.values())).shape[0]
    return [{k: v[i:i + chunk_size] for k, v in inputs.items()} for i in range(0, n, chunk_size)]


@dataclass
class GradCacheResult:
    loss: torch.Tensor                  # detached
    embeddings: list[torch.Tensor]      # detached, one (B_e, H) per encoder
    aux: object = None                  # whatever loss_fn returned besides the loss


def grad_cache(encoders: Sequence[tuple[Callable[[Inputs], torch.Tensor], Inputs]],
               loss_fn: Callable[..., torch.Tensor | tuple], chunk_size: int,
               backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
               no_sync: Callable[[], AbstractContextManager] | None = None) -> GradCacheResult:
    """Run steps 1-3 above and leave dL/dtheta in the parameters' ``.grad`` (accumulated, like
    ``loss.backward()``).

    encoders: pairs (encode, inputs): ``encode`` maps a chunk of ``inputs`` (a dict of (b, ...) tensors)
        to (b, H) embeddings; the same encode function may appear twice (a shared encoder).
    loss_fn: embeddings of every encoder -> scalar loss, or (loss, aux).
    backward: how a scalar is backpropagated (e.g. LightningModule.manual_backward).
    no_sync: with DDP, ``ddp_model.no_sync``: every chunk but the last of each encoder accumulates gradients
        locally; one backward over the last chunk of every encoder together all-reduces the sums once (without
        ``no_sync`` each chunk's backward all-reduces). Activation memory: one chunk per encoder at that step.
    """
    # 1. embed chunk by chunk, no graph
    chunks, states, reps = [], [], []
    for encode, inputs in encoders:
        parts = split_inputs(inputs, chunk_size)
        device = next(iter(inputs.values())).device
        st, out = [], []
        with torch.no_grad():
            for part in parts:
                st.append(RandState(device))
                out.append(encode(part))
        chunks.append(parts)
        states.append(st)
        reps.append(torch.cat(out).detach().requires_grad_())
    # 2. loss and embedding gradients on the full batch
    result = loss_fn(*reps)
    loss, aux = result if isinstance(result, tuple) else (result, None)
    grads = torch.autograd.grad(loss, reps, allow_unused=True)
    # 3. re-encode each chunk with a graph and backpropagate its cached gradient
    rng_after = RandState(reps[0].device)
    jobs = [(e, encode, part, state, grad) for e, ((encode, _), parts, st, grad) in enumerate(zip(encoders, chunks, states, grads))
            if grad is not None for part, state in zip(parts, st)]
    # The synchronised backward takes the last chunk of EVERY encoder at once: DDP all-reduces only the
    # parameters that backward reaches, so a last chunk of the passage encoder alone would leave a separate
    # query encoder's gradients local (ranks' weights drift apart; DDP fails on the next step).
    last = {e: n for n, (e, *_) in enumerate(jobs)}
    starts, final = {}, []
    for n, (e, encode, part, state, grad) in enumerate(jobs):
        start, rows = starts.get(e, 0), len(next(iter(part.values())))
        starts[e] = start + rows
        if n in last.values():
            final.append((encode, part, state, grad[start:start + rows]))
            continue
        state.restore()
        with nullcontext() if no_sync is None else no_sync():
            backward((encode(part) * grad[start:start + rows]).sum())
    surrogate = 0
    for encode, part, state, grad in final:
        state.restore()  # the chunk's dropout masks, as in step 1
        surrogate = surrogate + (encode(part) * grad).sum()
    backward(surrogate)
    rng_after.restore()
    return GradCacheResult(loss.detach(), [r.detach() for r in reps], aux)
