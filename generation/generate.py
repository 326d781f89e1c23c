"""Batched generation with ``model.generate``: prompts sorted by length (less padding), left padded,
greedy by default, returned in input order as the decoded continuations only. When every prompt starts with
the same tokens (an instruction, few-shot demonstrations), their KV cache is computed once and each batch
starts from a copy: ``[prefix | left padding | suffix]``, the padding masked and positions taken from the
attention mask by ``generate``, so each row continues its own unpadded prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteriaList

from training.precision import lm_autocast
from generation.stopping import StopOnStrings
from generation.scoring import MIN_SHARED_PREFIX, prefix_cache, repeat_cache, shared_prefix_length
from generation.tokens import pad


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 8,
             add_special_tokens: bool = True, stop_strings: Sequence[str] | None = ("\n",), do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, shared_prefix: bool = True) -> list[str]:
    """Continuations of ``prompts`` (decoded, special tokens skipped).

    ``add_special_tokens`` is False for prompts rendered with a chat template. ``stop_strings`` end a row
    early once its continuation contains one of them (:class:`generation.stopping.StopOnStrings`; the stop
    string stays in the returned text).
    ``shared_prefix``: start every batch from the cache of the prompts' common leading tokens (when there are
    at least ``generation.scoring.MIN_SHARED_PREFIX`` of them)."""
    if tokenizer.padding_side != "left":
        raise ValueError("generate: the tokenizer must pad on the left (load it with training.models.load_tokenizer)")
    device = next(model.parameters()).device
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    prefix = shared_prefix_length([(ids, []) for ids in encoded]) if shared_prefix else 0
    cache = prefix_cache(model, encoded[0][:prefix]) if prefix >= MIN_SHARED_PREFIX else None
    lengths = [len(ids) for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list[str] = [""] * len(prompts)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # keep generation_config's sampling defaults from triggering warnings in greedy mode
        kwargs.update(temperature=None, top_p=None, top_k=None)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if cache is None:
            batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                              add_special_tokens=add_special_tokens)
        else:
            ids, mask = pad([encoded[i][prefix:] for i in rows], tokenizer.pad_token_id, "left")
            head = torch.tensor([encoded[rows[0]][:prefix]] * len(rows))
            batch = {"input_ids": torch.cat([head, ids], 1),
                     "attention_mask": torch.cat([torch.ones_like(head), mask], 1),
                     "past_key_values": repeat_cache(cache, len(rows))}
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        stopping = [StopOnStrings(tokenizer, stop_strings, batch["input_ids"].shape[1])] if stop_strings else []
        with lm_autocast(model):
            seqs = model.generate(**batch, **kwargs, stopping_criteria=StoppingCriteriaList(stopping))
        new = seqs[:, batch["input_ids"].shape[1]:]
        for r, i in enumerate(rows):
            out[i] = tokenizer.decode(new[r], skip_special_tokens=True)
    return out
