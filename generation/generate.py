"""Batched generation with ``model.generate``: prompts sorted by length (less padding), left padded,
greedy by default, returned in input order as the decoded continuations only."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from generation.lm import lm_autocast


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 8,
             add_special_tokens: bool = True, stop_strings: Sequence[str] | None = ("\n",), do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Continuations of ``prompts`` (decoded, special tokens skipped).

    ``add_special_tokens`` is False for prompts rendered with a chat template. ``stop_strings`` end a row
    early once its continuation contains one of them (the stop string stays in the returned text)."""
    if tokenizer.padding_side != "left":
        raise ValueError("generate: the tokenizer must pad on the left (load it with generation.lm.load_tokenizer)")
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list[str] = [""] * len(prompts)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # keep generation_config's sampling defaults from triggering warnings in greedy mode
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop_strings:
        kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                          add_special_tokens=add_special_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
        with lm_autocast(model):
            seqs = model.generate(**batch, **kwargs)
        new = seqs[:, batch["input_ids"].shape[1]:]
        for r, i in enumerate(rows):
            out[i] = tokenizer.decode(new[r], skip_special_tokens=True)
    return out
