"""LM scoring: log p(y | d, x) for many (document, input, target) triples in length-sorted batches.

For a prompt c = render(d, x) and a target y = (y_1 .. y_T):

    log p(y | c) = sum_t log p(y_t | c, y_<t)          (reduction="sum")
    (1/T) sum_t log p(y_t | c, y_<t)                   (reduction="mean", per-token mean)

Prompt tokens are masked (they are conditioned on, never scored). It is the building block of the REPLUG
ensemble, of REPLUG LSR's LM-likelihood targets and of answer-likelihood evaluation.

Batching: rows are sorted by length (longest first) so each batch pads little; they are padded on the
left (positions from the attention mask, so absolute-position models score as unpadded), so every
target ends at the last position and only the last T_max + 1 positions' logits are computed
(``logits_to_keep``), which saves a (B, L, vocab) tensor per batch.

Shared prefix: when every prompt starts with the same tokens (a fixed instruction, few-shot demonstrations,
a chat template's system turn), their KV cache is computed once and copied across each batch, and only the
suffixes (the rest of the prompt, and the target) are run: ``[prefix | left padding | suffix]``, the padding
masked and the suffix's positions counted from the attention mask, so each row sees exactly its own
unpadded sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from training.precision import lm_autocast
from generation.logprobs import (MIN_SHARED_PREFIX, logprobs_from_logits, position_ids, sequence_logprobs,
                                 supports_logits_to_keep)
from generation.prompts import PromptFormat, uses_chat
from generation.tokens import pad


def encode_pairs(tokenizer, prompts: Sequence[str], targets: Sequence[str], *, add_special_tokens: bool = True,
                 append_eos: bool = False, max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, target); the prompt is tokenized with ``add_special_tokens`` (False
    when it was rendered with a chat template, which already holds them), the target without. Over
    ``max_length`` tokens, the prompt loses tokens from its left, never the target."""
    if len(prompts) != len(targets):
        raise ValueError(f"encode_pairs: {len(prompts)} prompts but {len(targets)} targets")
    p_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    t_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    pairs = []
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        t = list(t) + ([tokenizer.eos_token_id] if append_eos else [])
        if not t:
            raise ValueError(f"scoring: target {i} ({targets[i]!r}) has no tokens")
        if max_length is not None and len(p) + len(t) > max_length:
            if len(t) >= max_length:
                raise ValueError(f"scoring: target {i} has {len(t)} tokens, not less than max_length={max_length}")
            p = p[len(p) + len(t) - max_length:]
        if not p:
            raise ValueError(f"scoring: prompt {i} ({prompts[i]!r}) has no tokens; the first target token needs context")
        pairs.append((list(p), t))
    return pairs


def token_logprobs(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 8,
                   add_special_tokens: bool = True, append_eos: bool = False, max_length: int | None = None,
                   requires_grad: bool = False, shared_prefix: bool = True) -> list[torch.Tensor]:
    """Per-token log p(y_t | prompt, y_<t) for each (prompt, target): a list of (T_i,) float32 tensors,
    in input order. With ``requires_grad`` the graph is kept (for training through the LM). ``shared_prefix``:
    see :func:`pair_logprobs`."""
    pairs = encode_pairs(tokenizer, prompts, targets, add_special_tokens=add_special_tokens, append_eos=append_eos,
                         max_length=max_length)
    return pair_logprobs(model, pairs, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0,
                         requires_grad=requires_grad, shared_prefix=shared_prefix)


def shared_prefix_length(pairs: Sequence[tuple[list[int], list[int]]]) -> int:
    """Tokens every prompt starts with, leaving at least one prompt token in each suffix (its logit predicts
    the first target token, or the first generated one)."""
    prompts = [p for p, _ in pairs]
    if not prompts:
        return 0
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def pair_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 8, pad_id: int = 0,
                  requires_grad: bool = False, shared_prefix: bool = True) -> list[torch.Tensor]:
    """:func:`token_logprobs` on already tokenized (prompt ids, target ids) pairs, through the LM core's
    :func:`generation.logprobs.sequence_logprobs` (positions from the attention mask).

    ``shared_prefix``: when all prompts share at least ``MIN_SHARED_PREFIX`` leading tokens (and no gradient is
    needed), compute their KV cache once (:func:`prefix_cached_logprobs`)."""
    prefix = shared_prefix_length(pairs) if shared_prefix and not requires_grad and pairs else 0
    if prefix >= MIN_SHARED_PREFIX:
        return prefix_cached_logprobs(model, pairs, prefix, batch_size=batch_size, pad_id=pad_id)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[torch.Tensor | None] = [None] * len(pairs)
    with torch.set_grad_enabled(requires_grad):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = pad([pairs[i][0] + pairs[i][1] for i in rows], pad_id, side="left")
            t_max = max(len(pairs[i][1]) for i in rows)
            # every target ends at the last column, so only the last t_max columns are scored
            lp = sequence_logprobs(model, ids, mask, micro_batch_size=len(rows),
                                   start=ids.shape[1] - t_max).logprobs[:, -t_max:]  # (B, T_max)
            for r, i in enumerate(rows):
                out[i] = lp[r, t_max - len(pairs[i][1]):]
    return out  # type: ignore[return-value]


@torch.no_grad()
def prefix_cache(model, prefix_ids: Sequence[int]):
    """The KV cache of one row of ``prefix_ids`` (batch 1), computed in the model's precision."""
    head = torch.tensor([list(prefix_ids)], device=next(model.parameters()).device)
    keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    with lm_autocast(model):
        return model(input_ids=head, use_cache=True, **keep).past_key_values


def repeat_cache(cache, rows: int):
    """A copy of a batch-1 ``cache`` with ``rows`` rows: the forward that uses it appends to it in place, so
    every batch needs its own."""
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(rows)
    return past


@torch.no_grad()
def prefix_cached_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], prefix: int, *, batch_size: int = 8,
                           pad_id: int = 0) -> list[torch.Tensor]:
    """:func:`pair_logprobs` with the first ``prefix`` prompt tokens (the same in every pair) run once.

    Each batch gets its own copy of the prefix's cache, repeated to B rows; its suffixes are left padded to
    S columns, so every target ends at the last column, and the attention mask (B, prefix + S) is 1 on the
    prefix, 0 on the padding, 1 on the suffix. Positions come from that mask: a suffix continues at
    ``prefix`` whatever its padding."""
    device = next(model.parameters()).device
    keep = supports_logits_to_keep(model)
    cache = prefix_cache(model, pairs[0][0][:prefix])
    suffixes = [p[prefix:] + t for p, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(suffixes[i]))
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad([suffixes[i] for i in rows], pad_id, side="left")                    # (B, S)
        mask = torch.cat([torch.ones(len(rows), prefix, dtype=mask.dtype), mask], 1)         # (B, prefix + S)
        t_max = max(len(pairs[i][1]) for i in rows)
        past = repeat_cache(cache, len(rows))
        ids, mask = ids.to(device), mask.to(device)
        with lm_autocast(model):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)[:, prefix:],
                           past_key_values=past, use_cache=True,
                           **({"logits_to_keep": t_max + 1} if keep else {})).logits
        lp = logprobs_from_logits(logits[:, -t_max - 1:-1], ids[:, -t_max:])                 # (B, T_max)
        for r, i in enumerate(rows):
            out[i] = lp[r, t_max - len(pairs[i][1]):]
    return out  # type: ignore[return-value]


def reduce_logprobs(per_token: Sequence[torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """(N,) sequence scores: the sum of the token log-probabilities, or their per-token mean."""
    if reduction == "sum":
        return torch.stack([lp.sum() for lp in per_token])
    if reduction == "mean":
        return torch.stack([lp.mean() for lp in per_token])
    raise ValueError(f"unknown reduction {reduction!r}; expected 'sum' or 'mean'")


def score_triples(model, tokenizer, documents: Sequence[str | Sequence[str] | None], inputs: Sequence[str],
                  targets: Sequence[str], *, prompt_format: PromptFormat | None = None, reduction: str = "sum",
                  batch_size: int = 8, append_eos: bool = False, max_length: int | None = None,
                  requires_grad: bool = False, shared_prefix: bool = True) -> torch.Tensor:
    """(N,) log p(y | d, x) for triples (d, x, y): d is one passage, several passages, or None (no
    retrieval); the prompt is ``prompt_format.render(tokenizer, x, d)`` (chat template when the tokenizer
    has one, unless the format says otherwise)."""
    if not len(documents) == len(inputs) == len(targets):
        raise ValueError(f"score_triples: {len(documents)} documents, {len(inputs)} inputs, {len(targets)} targets")
    fmt = prompt_format or PromptFormat()
    prompts = [fmt.render(tokenizer, x, [] if d is None else [d] if isinstance(d, str) else list(d))
               for d, x in zip(documents, inputs)]
    per_token = token_logprobs(model, tokenizer, prompts, targets, batch_size=batch_size,
                               add_special_tokens=not uses_chat(tokenizer, fmt.chat), append_eos=append_eos,
                               max_length=max_length, requires_grad=requires_grad, shared_prefix=shared_prefix)
    return reduce_logprobs(per_token, reduction)
