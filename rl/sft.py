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
from dataclasses import dataclass, field

import torch

from generation.qa_metrics import has_answer
from generation.tokens import TokenBatch


@dataclass
class WarmStart:
    """The optional supervised warm start of an RL run: ``questions`` (the first N training questions whose
    search result holds the answer; 0: none), ``epochs`` over their demonstrations, ``batch_size`` per
    optimizer step."""
    questions: int = 0
    epochs: int = 1
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.questions < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"warm_start: questions >= 0, epochs and batch_size >= 1, got {self}")


@dataclass
class Demonstrations(TokenBatch):
    """A right-padded prompt + response TokenBatch (``loss_mask`` 1 on the response's own tokens only)
    and the response texts."""

    texts: list[str] = field(default_factory=list)

    def to(self, device) -> Demonstrations:
        b = super().to(device)
        return Demonstrations(b.input_ids, b.attention_mask, b.loss_mask, b.turn_ids, self.texts)

    def select(self, idx) -> Demonstrations:
        b = super().select(idx)
        rows = range(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        return Demonstrations(b.input_ids, b.attention_mask, b.loss_mask, b.turn_ids, [self.texts[i] for i in rows])


class SearchEngineDown(RuntimeError):
    """Every search of the warm start failed: the engine, not the data, is the problem."""


def protocol_demonstrations(tokenizer, prompts: Sequence[str], questions: Sequence[str],
                            answers: Sequence[Sequence[str]], search) -> Demonstrations:
    """One demonstration per question whose search (the question as the query) returns information
    containing a gold answer; the others are left out (the result may be shorter than the input). The
    segments are tokenised separately, as the rollout inserts them: generated / information / generated.
    ``search`` is the rollout's tool (``information(queries)``, ``last_errors``: rl.search.SafeSearch)."""
    if not len(prompts) == len(questions) == len(answers):
        raise ValueError("protocol_demonstrations: prompts, questions and answers differ in length")
    infos = search.information([q.strip() for q in questions])
    failed = int(getattr(search, "last_errors", 0))
    if questions and failed >= len(questions):
        raise SearchEngineDown(f"protocol_demonstrations: all {len(questions)} warm-start searches failed "
                               f"({infos[0][:300]}); check the search engine")
    rows, texts = [], []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for prompt, q, gold, info in zip(prompts, questions, answers, infos):
        if not has_answer(info, gold):
            continue
        answer = next(a for a in gold if has_answer(info, [a]))  # the gold string the passages contain
        segments = [(f"<search> {q.strip()} </search>", 1), (f"\n\n{info}\n\n", 0), (f"<answer> {answer} </answer>", 1)]
        # the policy learns to stop after its answer: EOS carries loss
        rows.append([(enc(prompt), 0), *[(enc(text), own) for text, own in segments], (eos, 1)])
        texts.append("".join(t for t, _ in segments))
    if not rows:
        raise ValueError(f"protocol_demonstrations: no question's information contains its answer "
                         f"({failed} of {len(questions)} searches failed)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    b = TokenBatch.from_segments(rows, pad_id, "right")
    return Demonstrations(b.input_ids, b.attention_mask, b.loss_mask, None, texts)
