"""Prefill a batch of prompts computing each distinct prompt once and their common leading tokens once.

An RL rollout repeats every prompt G times (the GRPO/RLOO group) and every prompt starts with the same
instruction or chat-template turn. ``model.generate`` prefills all B rows in full: B x L token-forwards, most of
them repeats. :func:`prefill` instead runs

    the shared prefix (P tokens)      once, batch 1              (generation.scoring.prefix_cache)
    each distinct prompt's suffix     once per distinct prompt   (U rows, columns P .. L-2)

and copies the cache rows to the B rows (``batch_select_indices``). The batch is laid out as
``[prefix | left padding | suffix]`` with the padding masked and positions taken from the attention mask, so
each row sees exactly its own unpadded prompt; the cache covers every column but the last, which ``generate``
then runs itself to produce the first token's logits. The tokens generated and their distribution are those of a
plain prefill, up to float rounding (tests/test_prefill.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from generation.logprobs import position_ids, supports_logits_to_keep
from generation.scoring import MIN_SHARED_PREFIX, prefix_cache, repeat_cache, shared_prefix_length
from generation.tokens import pad


@torch.no_grad()
def prefill(model, prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, object] | None:
    """``(input_ids, attention_mask, cache)`` for ``model.generate(input_ids=..., attention_mask=...,
    past_key_values=cache)``: (B, L) ids and mask in the layout above, the cache holding columns 0 .. L-2.

    None when nothing is repeated (all prompts distinct and a common prefix under ``MIN_SHARED_PREFIX``
    tokens): the caller's plain prefill costs the same. Runs in the caller's precision context."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prefill: every prompt needs at least one token")
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    unique = [list(p) for p in distinct]
    n_prefix = shared_prefix_length([(p, []) for p in unique])
    if n_prefix < MIN_SHARED_PREFIX:
        n_prefix = 0
        if len(unique) == len(prompts) or min(len(p) for p in unique) == max(len(p) for p in unique) == 1:
            return None
    device = next(model.parameters()).device
    suffix, suffix_mask = pad([p[n_prefix:] for p in unique], pad_id, "left")
    head = torch.tensor([unique[0][:n_prefix]] * len(unique), dtype=torch.long)
    ids = torch.cat([head, suffix], 1)
    mask = torch.cat([torch.ones_like(head), suffix_mask], 1)
    cache = repeat_cache(prefix_cache(model, unique[0][:n_prefix]), len(unique)) if n_prefix else DynamicCache()
    if ids.shape[1] - 1 > n_prefix:  # the distinct suffixes, all but the last column
        m = mask[:, :-1].to(device)
        keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
        model(input_ids=ids[:, n_prefix:-1].to(device), attention_mask=m, position_ids=position_ids(m)[:, n_prefix:],
              past_key_values=cache, use_cache=True, **keep)
    rows = torch.tensor(which, dtype=torch.long)
    cache.batch_select_indices(rows.to(device))
    return ids[rows], mask[rows], cache
