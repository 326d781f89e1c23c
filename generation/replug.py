"""REPLUG ensemble (Shi et al., 2023): each retrieved document is prepended to the input separately and
the LM's next-token distributions are mixed with weights from the retrieval scores:

    p(y | x, D') = sum_{d in D'} p(y | d o x) * lambda(d, x),
    lambda(d, x) = exp(s(d, x)) / sum_{d' in D'} exp(s(d', x))          (softmax over the top-k scores)

applied at every position (next-token distribution), for scoring a target y and for greedy generation.
Probabilities are mixed, not logits; in log space the mixture is a log-sum-exp over documents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.precision import lm_autocast
from generation.logprobs import position_ids, supports_logits_to_keep
from generation.prompts import PromptFormat, uses_chat
from generation.scoring import token_logprobs
from generation.stopping import has_stop


def replug_weights(scores: torch.Tensor | Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    """lambda(d, x) = softmax(s(d, x) / temperature) over the last dimension (the k documents)."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if temperature <= 0:
        raise ValueError(f"replug_weights: temperature must be positive, got {temperature}")
    return torch.softmax(scores / temperature, dim=-1)


def replug_mixture(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log sum_d lambda_d p_d: ``logprobs`` (k, ...) log-probabilities per document, ``weights`` (k,)
    summing to one; returns the (...) log-probability of the mixture."""
    if logprobs.shape[0] != weights.shape[0]:
        raise ValueError(f"replug_mixture: {logprobs.shape[0]} documents' log-probs but {weights.shape[0]} weights")
    log_w = torch.log(weights.to(logprobs)).reshape(-1, *([1] * (logprobs.dim() - 1)))
    return torch.logsumexp(log_w + logprobs, dim=0)


def _prompts(tokenizer, fmt: PromptFormat, questions, passages) -> tuple[list[str], list[int]]:
    prompts, group = [], []
    for q, (question, docs) in enumerate(zip(questions, passages, strict=True)):
        if not docs:
            raise ValueError(f"REPLUG: question {q} ({question!r}) has no retrieved passages")
        for doc in docs:
            prompts.append(fmt.render(tokenizer, question, [doc]))
            group.append(q)
    return prompts, group


def replug_score(model, tokenizer, questions: Sequence[str], passages: Sequence[Sequence[str]],
                 scores: Sequence[Sequence[float]], targets: Sequence[str], *, prompt_format: PromptFormat | None = None,
                 temperature: float = 1.0, reduction: str = "sum", batch_size: int = 8) -> torch.Tensor:
    """(N,) log p(y | x, D') of each target under the ensemble, mixing per token:
    sum_t log sum_d lambda(d, x) p(y_t | d o x, y_<t) (or its per-token mean)."""
    fmt = prompt_format or PromptFormat()
    prompts, group = _prompts(tokenizer, fmt, questions, passages)
    per_token = token_logprobs(model, tokenizer, prompts, [targets[g] for g in group], batch_size=batch_size,
                               add_special_tokens=not uses_chat(tokenizer, fmt.chat))
    grouped, row = [], 0
    for docs in passages:
        grouped.append(torch.stack(per_token[row:row + len(docs)]))
        row += len(docs)
    return replug_sequence_logprobs(grouped, [s[:len(d)] for s, d in zip(scores, passages)], temperature, reduction)


def replug_sequence_logprobs(per_token: Sequence[torch.Tensor], scores: Sequence[Sequence[float]],
                             temperature: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """(N,) ensemble log-likelihoods from each question's (k, T) per-token log p(y_t | d o x, y_<t) and its k
    retrieval scores: the documents are mixed at every token, then the T mixed log-probs are summed
    (or averaged)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'sum' or 'mean'")
    out = []
    for lp, s in zip(per_token, scores, strict=True):
        mixed = replug_mixture(lp, replug_weights(s, temperature))          # (T,)
        out.append(mixed.sum() if reduction == "sum" else mixed.mean())
    return torch.stack(out)


def replug_next_token(logprobs: torch.Tensor, log_weights: torch.Tensor, group: torch.Tensor,
                      num_groups: int) -> torch.Tensor:
    """(Q, V) mixed next-token log-probs log sum_d lambda_d p(. | d o x) from the (R, V) log-probs of R rows,
    row r holding one document of question ``group[r]`` with log weight ``log_weights[r]``."""
    return torch.stack([torch.logsumexp(log_weights[group == g, None] + logprobs[group == g], dim=0)
                        for g in range(num_groups)])


@torch.inference_mode()
def replug_generate(model, tokenizer, questions: Sequence[str], passages: Sequence[Sequence[str]],
                    scores: Sequence[Sequence[float]], *, prompt_format: PromptFormat | None = None,
                    temperature: float = 1.0, max_new_tokens: int = 32, batch_size: int = 4,
                    stop_strings: Sequence[str] = ("\n",)) -> list[str]:
    """Greedy decoding from the ensemble: at each step the k rows of a question (one per document) are run
    with a KV cache, their next-token distributions mixed with lambda(d, x), the argmax appended to all k
    rows. ``batch_size`` questions (so sum of their k rows) go through the model together. Stops at EOS
    or when the continuation contains a stop string."""
    if tokenizer.padding_side != "left":
        raise ValueError("replug_generate: the tokenizer must pad on the left (training.models.load_tokenizer)")
    fmt = prompt_format or PromptFormat()
    device = next(model.parameters()).device
    keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}  # no (R, L, vocab) logits on the prompt
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = {tokenizer.eos_token_id} | set([eos] if isinstance(eos, int) else eos or [])
    answers: list[str] = [""] * len(questions)
    for start in range(0, len(questions), batch_size):
        qs = list(range(start, min(start + batch_size, len(questions))))
        prompts, group = _prompts(tokenizer, fmt, [questions[q] for q in qs], [passages[q] for q in qs])
        log_w = torch.cat([torch.log(replug_weights(scores[q][:len(passages[q])], temperature)) for q in qs]).to(device)
        group_t = torch.tensor(group, device=device)
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not uses_chat(tokenizer, fmt.chat))
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        positions = position_ids(mask)
        past, tokens = None, [[] for _ in qs]
        done = torch.zeros(len(qs), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            with lm_autocast(model):
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                            use_cache=True, **keep)
            past = out.past_key_values
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)                     # (R, V)
            nxt = replug_next_token(logp, log_w, group_t, len(qs)).argmax(-1)               # (Q,)
            for g in range(len(qs)):
                if not done[g]:
                    if nxt[g].item() in eos:
                        done[g] = True
                    else:
                        tokens[g].append(nxt[g].item())
                        if has_stop(tokenizer.decode(tokens[g]), stop_strings):  # generation.stopping's rule
                            done[g] = True
            if bool(done.all()):
                break
            ids = nxt[group_t].unsqueeze(-1)                                                 # (R, 1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
            positions = positions[:, -1:] + 1
        for g, q in enumerate(qs):
            answers[q] = tokenizer.decode(tokens[g], skip_special_tokens=True)
    return answers
