"""Supervised warm start on the search protocol (optional, before RL).

Search-R1's 3B-7B policies follow ``<search>``/``<answer>`` from the instruction alone; a 135M policy
rarely does, so GRPO sees almost no reward and collapses to the shortest well-formed response (measured,
see README). A short warm start on demonstrations fixes the protocol, not the answers' knowledge:

    response = "<search> question </search>" + "\\n\\n<information>top-k</information>\\n\\n"
               + "<answer> gold answer </answer>"

built from TRAINING questions whose retrieved information contains the gold answer (so the demonstration
shows reading an answer off the passages, never guessing). The loss is the mean negative log-likelihood
of the policy's own tokens: the prompt and the inserted information are masked exactly as in RL
(``loss_mask``), so the model is never trained to produce retrieved text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generation.qa_metrics import has_answer
from rl.rollout import sequence_logprobs
from rl.search import SafeSearch


@dataclass
class Demonstrations:
    """Right-padded prompt + response token ids; ``loss_mask`` is 1 on the response's own tokens only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device) -> "Demonstrations":
        return Demonstrations(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                              self.texts)

    def select(self, idx) -> "Demonstrations":
        return Demonstrations(self.input_ids[idx], self.attention_mask[idx], self.loss_mask[idx],
                              [self.texts[i] for i in (idx.tolist() if torch.is_tensor(idx) else idx)])


def protocol_demonstrations(tokenizer, prompts: Sequence[str], questions: Sequence[str],
                            answers: Sequence[Sequence[str]], search: SafeSearch) -> Demonstrations:
    """One demonstration per question whose search (the question as the query) returns information
    containing a gold answer; the others are left out (the result may be shorter than the input). The
    segments are tokenised separately, as the rollout inserts them: generated / information / generated."""
    if not len(prompts) == len(questions) == len(answers):
        raise ValueError("protocol_demonstrations: prompts, questions and answers differ in length")
    infos = search.information([q.strip() for q in questions])
    rows, texts = [], []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for prompt, q, gold, info in zip(prompts, questions, answers, infos):
        if not has_answer(info, gold):
            continue
        answer = next(a for a in gold if has_answer(info, [a]))  # the gold string the passages contain
        segments = [(f"<search> {q.strip()} </search>", 1), (f"\n\n{info}\n\n", 0), (f"<answer> {answer} </answer>", 1)]
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        mask = [0] * len(ids)
        for text, own in segments:
            seg = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids, mask = ids + seg, mask + [own] * len(seg)
        ids, mask = ids + eos, mask + [1] * len(eos)  # the policy learns to stop after its answer
        rows.append((ids, mask))
        texts.append("".join(t for t, _ in segments))
    if not rows:
        raise ValueError("protocol_demonstrations: no question's information contains its answer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        loss_mask[i, :len(ids)] = torch.tensor(mask)
    return Demonstrations(input_ids, attention_mask, loss_mask, texts)


def sft_loss(model, demos: Demonstrations, micro_batch_size: int = 8) -> torch.Tensor:
    """Mean NLL over the masked tokens: -sum(mask * log p(x_t | x_<t)) / sum(mask)."""
    start = int(demos.loss_mask.float().argmax(1).min())  # no logits over the shared prompt prefix
    lp = sequence_logprobs(model, demos.input_ids, demos.attention_mask, micro_batch_size=micro_batch_size,
                           start=start)
    mask = demos.loss_mask.to(lp.dtype)
    return -(lp * mask).sum() / mask.sum().clamp(min=1)
