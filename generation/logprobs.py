"""Per-token log-probabilities of a causal LM, the one implementation every method uses: RL (old,
new and reference log-probs, entropy, the value head's hidden states), supervised training
(:func:`masked_nll`) and scoring.

    logprobs[:, t] = log p(x_t | x_<t) = z_t[x_t] / tau - logsumexp(z_t / tau)      for t >= start

where z_t are the logits computed at position t - 1 and tau the sampling temperature: a policy that
samples at tau must be scored at tau, or the importance ratio of the first on-policy pass is not 1.

Positions come from the attention mask, never from the column index, so left- and right-padded rows
give the same values, also on absolute-position models (GPT-2), where a padded column would otherwise
shift every position embedding.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from training.precision import lm_autocast
from generation.tokens import TokenBatch
from training.distributed import mean_over_ranks
from training.sharding import is_sharded


@dataclass
class LogProbs:
    logprobs: torch.Tensor                  # (B, L) float32, 0 before ``start``
    entropy: torch.Tensor | None = None     # (B, L) float32, entropy of p(. | x_<t) at the temperature
    hidden: torch.Tensor | None = None      # (B, L, H) last hidden states (input to a value head)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[labels]: (B, T, V), (B, T) -> (B, T) float32.

    Written as a gather minus a logsumexp, which never materialises a second (B, T, V) tensor."""
    if temperature <= 0:
        raise ValueError(f"logprobs_from_logits: temperature must be > 0, got {temperature}")
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) = logsumexp(z) - sum_v p_v z_v, (B, T, V) -> (B, T) float32 (divide z by the
    temperature first for the entropy of the sampling distribution)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every token among the real tokens of its row (0 for the first real token); padding
    gets a clamped, unused value. Correct for left padding, right padding and padding in the middle."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def supports_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@contextmanager
def dropout_off(*models: nn.Module):
    """Eval mode for the duration (gradients still flow): RL's old, new and reference log-probs must be
    computed the same way, or LoRA dropout makes the first on-policy importance ratio differ from 1
    (TRL disables dropout in RL for the same reason). Restores each module's previous mode."""
    modes = [[(m, m.training) for m in model.modules()] for model in models if model is not None]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for saved in modes:
            for m, was in saved:
                m.training = was


MIN_SHARED_PREFIX = 16  # tokens; below it the cache copies cost about what they save


def common_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, limit: int) -> int:
    """Leading columns (at most ``limit``) that are real tokens and equal in every row; 0 under
    ``MIN_SHARED_PREFIX``. The value to pass as ``sequence_logprobs(prefix=...)``."""
    limit = min(limit, input_ids.shape[1])
    if limit < MIN_SHARED_PREFIX or input_ids.shape[0] == 0:
        return 0
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(0) & attention_mask[:, :limit].bool().all(0)
    n = limit if bool(same.all()) else int((~same).nonzero()[0])
    return n if n >= MIN_SHARED_PREFIX else 0


def prefix_usable(model) -> bool:
    """A KV cache can carry the prefix, except with grad on under gradient checkpointing (transformers turns the
    cache off there) or FSDP2 (its backward re-gathers each block's parameters once, for one of the two
    forwards: the other finds them freed)."""
    return not (torch.is_grad_enabled() and (getattr(model, "is_gradient_checkpointing", False) or is_sharded(model)))


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
                      micro_batch_size: int = 8, start: int = 1, with_entropy: bool = False,
                      with_hidden: bool = False, prefix: int = 0) -> LogProbs:
    """``out.logprobs[:, t] = log p(x_t | x_<t)`` for ``t >= start`` (0 before it), in micro-batches.

    Pass as ``start`` the first column that matters (the shortest prompt under right padding): the
    vocabulary-sized logits of earlier columns are then never computed (``logits_to_keep``, when the
    model takes it). Gradients flow when grad is enabled; the caller decides train/eval mode
    (see :func:`dropout_off`). The forward runs in the model's precision (``training.precision.lm_autocast``);
    log-probs are computed from fp32 logits.

    ``prefix``: the first ``prefix`` columns are the same real tokens in every row (an instruction, few-shot
    shots: :func:`common_prefix`); each micro-batch runs them once (batch 1) and repeats their KV cache to its
    rows, then runs the rest, positions from the attention mask. Same values up to float rounding; gradients
    flow through the repeated cache. Must leave ``start - 1`` outside the prefix; ignored with ``with_hidden``
    and where :func:`prefix_usable` says no. Pass the same ``prefix`` to every call whose results are compared
    exactly (RL's old, new and reference log-probs: ``Rollouts.prefix``)."""
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"sequence_logprobs: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must be the same (B, L) shape")
    if micro_batch_size < 1:
        raise ValueError(f"sequence_logprobs: micro_batch_size must be >= 1, got {micro_batch_size}")
    device = next(model.parameters()).device
    length = input_ids.shape[1]
    start = max(1, min(start, length - 1)) if length > 1 else 1
    keep = length - start + 1  # logits at columns start-1 .. L-1 (the last one predicts nothing)
    kwargs = {"logits_to_keep": keep} if supports_logits_to_keep(model) else {}
    if prefix and (prefix > start - 1 or prefix >= length):
        raise ValueError(f"sequence_logprobs: prefix ({prefix}) must end before column start - 1 ({start - 1})")
    prefix = prefix if prefix >= 1 and not with_hidden and prefix_usable(model) else 0
    logps, ents, hiddens = [], [], []
    for s in range(0, input_ids.shape[0], micro_batch_size):
        ids = input_ids[s:s + micro_batch_size].to(device)
        am = attention_mask[s:s + micro_batch_size].to(device)
        with lm_autocast(model):
            if prefix:
                past = model(input_ids=ids[:1, :prefix], use_cache=True, **({"logits_to_keep": 1} if kwargs else {})
                             ).past_key_values
                past.batch_repeat_interleave(ids.shape[0])
                out = model(input_ids=ids[:, prefix:], attention_mask=am, position_ids=position_ids(am)[:, prefix:],
                            past_key_values=past, use_cache=True, **kwargs)
            else:
                out = model(input_ids=ids, attention_mask=am, position_ids=position_ids(am), use_cache=False,
                            output_hidden_states=with_hidden, **kwargs)
        logits = out.logits[:, -keep:-1]  # (b, L - start, V): column c predicts token c + 1
        if length > 1:
            logps.append(nn.functional.pad(logprobs_from_logits(logits, ids[:, start:], temperature), (start, 0)))
            if with_entropy:
                ents.append(nn.functional.pad(entropy_from_logits(logits.float() / temperature), (start, 0)))
        else:
            logps.append(torch.zeros(ids.shape, device=device))
            if with_entropy:
                ents.append(torch.zeros(ids.shape, device=device))
        if with_hidden:
            hiddens.append(out.hidden_states[-1])
    return LogProbs(torch.cat(logps), torch.cat(ents) if with_entropy else None,
                    torch.cat(hiddens) if with_hidden else None)


def masked_nll(model, batch: TokenBatch, micro_batch_size: int = 8, *, across_ranks: bool = False) -> torch.Tensor:
    """The supervised loss: -sum_t loss_mask_t log p(x_t | x_<t) / sum_t loss_mask_t, over the whole batch
    (each loss token weighs the same, whichever row it is in).

    ``across_ranks``: under data parallelism (DDP, FSDP) divide by the mean loss-token count over ranks
    (``training.distributed.mean_over_ranks``, a collective), so that the averaged gradient is that of the
    token-mean over the global batch, whatever each rank's count; training steps pass True."""
    n = batch.loss_mask.sum()
    if int(n) == 0:
        raise ValueError("masked_nll: the batch has no loss token (loss_mask is all 0)")
    if across_ranks:
        n = mean_over_ranks(n)
    if bool((batch.loss_mask.bool() & ~batch.attention_mask.bool()).any()):
        raise ValueError("masked_nll: loss_mask is 1 on a padding position (attention_mask 0)")
    if bool(batch.loss_mask[:, 0].any()):
        raise ValueError("masked_nll: loss_mask is 1 on column 0, a token without context")
    start = batch.first_loss_position
    lp = sequence_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=micro_batch_size,
                           start=start, prefix=common_prefix(batch.input_ids, batch.attention_mask, start - 1)).logprobs
    return -(lp * batch.loss_mask.to(lp.device, lp.dtype)).sum() / n.to(lp.device, lp.dtype)
