"""Multi-turn rollouts in plain PyTorch + transformers, with a pluggable environment (rl.envs).

For a batch of prompts (already rendered), turn k = 0, 1, ...:

    every unfinished row generates, each stopping at its own stop string of the environment (e.g.
    ``</search>``, ``</answer>``), EOS, or the turn's token budget; the environment is then asked, per
    row, what to append (search results, a fixed instruction; masked out of the loss) and whether the
    row is done. Finished rows wait while the others go on.

The result is a right-padded :class:`generation.tokens.TokenBatch` of prompt + response whose
``loss_mask`` is 1 only on tokens the policy generated and whose ``turn_ids`` give the turn of each of
them, the rollout policy's log-probs (at the sampling temperature, dropout off) and the environment's
per-row counters (searches, failed searches, attempts).

Every turn a row is asked to generate yields at least one token: a row without room left in
``max_response_tokens`` is finished before the next turn, so no rollout ends with an empty turn.

The KV cache is reused across turns (``reuse_cache``): the first turn computes each distinct prompt (a
group's G copies) and the prompts' common prefix once (generation.prefill), finished rows leave the cache,
and the appended text (a different length in every row) is added after masked padding, so only the new
tokens are prefilled. ``reuse_cache=False`` prefills the whole context at every turn (the simple reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, StoppingCriteriaList

from training.precision import lm_autocast
from generation.logprobs import common_prefix, dropout_off, sequence_logprobs
from generation.prefill import prefill
from generation.stopping import StopOnStrings
from generation.tokens import TokenBatch, pad
from rl.envs import ANSWER_STOP, SEARCH_STOP, Environment, SearchEnv, SingleTurn, Turn

__all__ = ["Rollouts", "rollout", "StopOnStrings", "SEARCH_STOP", "ANSWER_STOP", "SearchEnv", "SingleTurn"]


@dataclass
class Rollouts:
    """N finished rollouts.

    tokens: right-padded (N, L) prompt + response, ``loss_mask`` 1 on generated tokens, ``turn_ids`` their
    turn. old_logprobs: (N, L), ``log pi_old(x_t | x_<t)`` on generated tokens, 0 elsewhere (None when not
    computed). prompt_lengths: tokens per prompt. responses: the decoded responses (generated and
    appended text, no prompt). turn_texts: per row, the text generated in each turn. counters: the
    environment's per-row counts, (N,) long tensors. prefix: the leading columns every row shares (the
    instruction, the shots; generation.logprobs.common_prefix, at least MIN_SHARED_PREFIX or 0), fixed at the
    rollout and kept by ``select`` so that old, new and reference log-probs split the sequence the same way.
    """
    tokens: TokenBatch
    old_logprobs: torch.Tensor | None
    prompt_lengths: list[int]
    responses: list[str]
    turn_texts: list[list[str]]
    counters: dict[str, torch.Tensor] = field(default_factory=dict)
    prefix: int = 0  # leading tokens shared by every row, run once per micro-batch by every log-prob pass

    def __len__(self) -> int:
        return len(self.tokens)

    input_ids = property(lambda self: self.tokens.input_ids)
    attention_mask = property(lambda self: self.tokens.attention_mask)
    loss_mask = property(lambda self: self.tokens.loss_mask)
    turn_ids = property(lambda self: self.tokens.turn_ids)

    @property
    def info_mask(self) -> torch.Tensor:
        """(N, L) 1 on appended (environment) tokens: in the response, real, not generated."""
        cols = torch.arange(self.input_ids.shape[1])[None]
        after_prompt = cols >= torch.tensor(self.prompt_lengths)[:, None]
        return (after_prompt & self.attention_mask.bool() & ~self.loss_mask.bool()).long()

    @property
    def response_lengths(self) -> torch.Tensor:
        """Generated tokens per rollout (appended text excluded)."""
        return self.loss_mask.sum(dim=1)

    @property
    def num_turns(self) -> torch.Tensor:
        return torch.tensor([len(t) for t in self.turn_texts])

    def counter(self, name: str) -> torch.Tensor:
        """A per-row counter of the environment, zeros if it keeps none of that name."""
        return self.counters.get(name, torch.zeros(len(self), dtype=torch.long))

    num_searches = property(lambda self: self.counter("searches"))
    search_errors = property(lambda self: self.counter("search_errors"))

    def select(self, idx) -> "Rollouts":
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.tolist()
        return Rollouts(self.tokens.select(idx), None if self.old_logprobs is None else self.old_logprobs[idx],
                        [self.prompt_lengths[i] for i in rows], [self.responses[i] for i in rows],
                        [self.turn_texts[i] for i in rows], {k: v[idx] for k, v in self.counters.items()}, self.prefix)


def _cut(tokenizer, ids: list[int], stops: Sequence[str], eos_ids: set[int]) -> tuple[int, str | None]:
    """Length of the turn: through the first EOS or the token completing the first stop string.
    Returns (n_tokens, stop) with stop the string that ended it (None for EOS or no stop)."""
    n_eos = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), len(ids))
    text = tokenizer.decode(ids[:n_eos], skip_special_tokens=False)
    found = [(text.find(s) + len(s), s) for s in stops if s in text]
    if not found:
        return n_eos, None
    end, stop = min(found)
    # Smallest prefix whose decoded text contains the stop string (decoding is monotone in the prefix).
    lo, hi = 1, n_eos
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=False)) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo, stop


@torch.no_grad()
def rollout(model, tokenizer, prompts: Sequence[str], env: Environment | None = None, *, max_turn_tokens: int = 128,
            max_response_tokens: int = 512, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
            compute_logprobs: bool = True, logprob_micro_batch_size: int = 8, generation_kwargs: dict | None = None,
            reuse_cache: bool = True) -> Rollouts:
    """Sample one multi-turn rollout per prompt (repeat a prompt G times for GRPO groups).

    ``env`` defaults to one turn stopping at ``</answer>`` or EOS. ``max_response_tokens`` caps generated +
    appended tokens per row; appended text that would overflow it is truncated and ends the row.
    ``generation_kwargs`` go to ``model.generate`` (e.g. a ``logits_processor``). With ``reuse_cache`` the KV
    cache of one turn is kept for the next: finished rows are dropped from it, and each continuing row's
    appended text follows the previous turn's tokens, with masked padding in between (positions come from
    the attention mask, so the model sees exactly the compact sequence); otherwise every turn prefills its
    whole context.
    """
    if not prompts:
        raise ValueError("rollout: no prompts")
    if max_turn_tokens < 1 or max_response_tokens < 1:
        raise ValueError(f"rollout: max_turn_tokens ({max_turn_tokens}) and max_response_tokens "
                         f"({max_response_tokens}) must be >= 1")
    env = env if env is not None else SingleTurn()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    n = len(prompts)
    env.reset(n)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    segments: list[list[tuple[list[int], int]]] = [[(p, 0)] for p in prompt_ids]
    used = [0] * n  # response tokens so far (generated + appended)
    turn_texts: list[list[str]] = [[] for _ in range(n)]
    done = [False] * n
    # KV-cache reuse state: the batch as generate last saw it (rows = global indices), and its cache.
    cache, seq, seq_mask, rows, pending = None, None, None, None, {}
    # one precision for the whole rollout: generation here, the old log-probs below (training.precision.lm_autocast)
    with dropout_off(model), lm_autocast(model):
        for turn in range(env.max_turns):
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            room = max(max_response_tokens - used[i] for i in active)
            if reuse_cache and seq is not None:
                keep = torch.tensor([rows.index(i) for i in active], dtype=torch.long)
                cache.batch_select_indices(keep.to(device))
                block, block_mask = pad([pending[i] for i in active], pad_id, "left")
                ids, am = torch.cat([seq[keep], block], 1), torch.cat([seq_mask[keep], block_mask], 1)
            else:
                contexts = [[t for seg, _ in segments[i] for t in seg] for i in active]
                first = prefill(model, contexts, pad_id) if reuse_cache and turn == 0 else None
                if first is not None:  # each distinct prompt and the shared prefix computed once
                    ids, am, cache = first
                else:
                    ids, am = pad(contexts, pad_id, "left")
                    cache = DynamicCache() if reuse_cache else None
            stopping = StoppingCriteriaList([StopOnStrings(tokenizer, env.stops, ids.shape[1])] if env.stops else [])
            out = model.generate(input_ids=ids.to(device), attention_mask=am.to(device),
                                 max_new_tokens=min(max_turn_tokens, room), do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=top_p if do_sample else None,
                                 top_k=None, stopping_criteria=stopping, pad_token_id=pad_id,
                                 past_key_values=cache, return_dict_in_generate=True, **(generation_kwargs or {}))
            sequences = out.sequences.cpu()
            new = sequences[:, ids.shape[1]:].tolist()
            new_mask = torch.zeros(len(active), len(new[0]) if new else 0, dtype=torch.long)
            turns = []
            for row, i in enumerate(active):
                k, stop = _cut(tokenizer, new[row], env.stops, eos_ids)
                k = min(k, max_response_tokens - used[i])
                new_mask[row, :k] = 1
                generated = new[row][:k]
                segments[i].append((generated, 1))
                used[i] += k
                text = tokenizer.decode(generated, skip_special_tokens=True)
                turn_texts[i].append(text)
                turns.append(Turn(i, turn, text, stop, bool(generated) and generated[-1] in eos_ids,
                                  max_response_tokens - used[i]))
            for t, reply in zip(turns, env.step(turns)):
                i = t.row
                if reply.append and not reply.done:
                    add = tokenizer(reply.append, add_special_tokens=False)["input_ids"]
                    room_left = max_response_tokens - used[i]
                    if len(add) >= room_left:  # no room for another generated token: the row ends here
                        add, done[i] = add[:room_left], True
                    segments[i].append((add, 0))
                    used[i] += len(add)
                    pending[i] = add
                    done[i] = done[i] or turn + 1 >= env.max_turns
                elif reply.append:  # appended text on a finished row: kept in the response, not trained on
                    add = tokenizer(reply.append, add_special_tokens=False)["input_ids"][:max_response_tokens - used[i]]
                    segments[i].append((add, 0))
                    used[i] += len(add)
                    done[i] = True
                else:
                    done[i] = reply.done or used[i] >= max_response_tokens or turn + 1 >= env.max_turns
                    pending[i] = []
            if reuse_cache:
                # Tokens generated after a row's stop (padding) stay in the cache, masked out from now on.
                cache, seq, seq_mask, rows = out.past_key_values, sequences, torch.cat([am, new_mask], 1), active

        tokens = TokenBatch.from_segments(segments, pad_id, "right", turns=True)
        start = min(len(p) for p in prompt_ids)
        prefix = common_prefix(tokens.input_ids, tokens.attention_mask, start - 1)
        old_logprobs = None
        if compute_logprobs:
            old_logprobs = sequence_logprobs(model, tokens.input_ids, tokens.attention_mask, temperature=temperature,
                                             micro_batch_size=logprob_micro_batch_size, start=start,
                                             prefix=prefix).logprobs.cpu() * tokens.loss_mask
    responses = [tokenizer.decode([t for seg, _ in s[1:] for t in seg], skip_special_tokens=True) for s in segments]
    counters = {k: torch.tensor(v, dtype=torch.long) for k, v in env.counters().items()}
    return Rollouts(tokens, old_logprobs, [len(p) for p in prompt_ids], responses, turn_texts, counters, prefix)
