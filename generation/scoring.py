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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from generation.logprobs import sequence_logprobs
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
                   requires_grad: bool = False) -> list[torch.Tensor]:
    """Per-token log p(y_t | prompt, y_<t) for each (prompt, target): a list of (T_i,) float32 tensors,
    in input order. With ``requires_grad`` the graph is kept (for training through the LM)."""
    pairs = encode_pairs(tokenizer, prompts, targets, add_special_tokens=add_special_tokens, append_eos=append_eos,
                         max_length=max_length)
    return pair_logprobs(model, pairs, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0,
                         requires_grad=requires_grad)


def pair_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 8, pad_id: int = 0,
                  requires_grad: bool = False) -> list[torch.Tensor]:
    """:func:`token_logprobs` on already tokenized (prompt ids, target ids) pairs, through the LM core's
    :func:`generation.logprobs.sequence_logprobs` (positions from the attention mask)."""
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
                  requires_grad: bool = False) -> torch.Tensor:
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
                               max_length=max_length, requires_grad=requires_grad)
    return reduce_logprobs(per_token, reduction)
