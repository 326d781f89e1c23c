"""Retrieval-augmented answering built from the parts: closed-book and retrieve-and-read answering,
recitation-augmented generation, and a text generator callable for query enhancement (HyDE, LameR).

    read:        prompt = instruction + "Passage 1: d_1 ... Passage k: d_k" + question -> generate
    closed book: prompt = instruction + question -> generate
    recitation:  recitation r = LM("recite a passage about x"), then answer = read(x, [r])   (Sun et al., 2023)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from generation.generate import generate
from generation.prompts import PromptFormat, first_line_answer, render_message, uses_chat

RECITE_TEMPLATE = ("Recite a short passage from Wikipedia that contains the answer to the question. "
                   "Do not answer the question directly.\n\nQuestion: {question}")


@dataclass
class Answers:
    """Prompts, raw generations and extracted short answers, aligned with the questions."""

    prompts: list[str]
    generations: list[str]
    answers: list[str]
    extra: dict[str, list] = field(default_factory=dict)


class TextGenerator:
    """``messages -> continuations``: renders each user message with the tokenizer's chat template (if
    any) and generates. The callable handed to query enhancement (HyDE, LameR) and recitation."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, stop_strings: Sequence[str] | None = None,
                 system: str | None = None, chat: bool | None = None):
        self.model, self.tokenizer, self.system, self.chat = model, tokenizer, system, chat
        self.kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, stop_strings=stop_strings)

    def prompts(self, messages: Sequence[str]) -> list[str]:
        return [render_message(self.tokenizer, m, self.system, self.chat) for m in messages]

    def __call__(self, messages: Sequence[str]) -> list[str]:
        return [g.strip() for g in generate(self.model, self.tokenizer, self.prompts(messages),
                                            add_special_tokens=not uses_chat(self.tokenizer, self.chat), **self.kwargs)]


def read(model, tokenizer, questions: Sequence[str], passages: Sequence[Sequence[str]] | None = None, *,
         prompt_format: PromptFormat | None = None, max_new_tokens: int = 32, batch_size: int = 8) -> Answers:
    """Answer each question greedily with its passages in the prompt (closed-book when ``passages`` is None
    or a question's list is empty)."""
    fmt = prompt_format or PromptFormat()
    passages = passages if passages is not None else [[] for _ in questions]
    if len(passages) != len(questions):
        raise ValueError(f"read: {len(questions)} questions but {len(passages)} passage lists")
    prompts = [fmt.render(tokenizer, q, list(p)) for q, p in zip(questions, passages)]
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           add_special_tokens=not uses_chat(tokenizer, fmt.chat))
    return Answers(prompts, generations, [first_line_answer(g) for g in generations])


def recite_and_answer(model, tokenizer, questions: Sequence[str], *, prompt_format: PromptFormat | None = None,
                      recite_template: str = RECITE_TEMPLATE, recitation_tokens: int = 96, max_new_tokens: int = 32,
                      batch_size: int = 8) -> Answers:
    """Recitation-augmented generation: the LM first recites a passage from its own memory, then answers
    with the recitation in the prompt as if it had been retrieved."""
    fmt = prompt_format or PromptFormat()
    reciter = TextGenerator(model, tokenizer, max_new_tokens=recitation_tokens, batch_size=batch_size,
                            stop_strings=("\n\n",), system=fmt.system, chat=fmt.chat)
    recitations = reciter([recite_template.format(question=q) for q in questions])
    out = read(model, tokenizer, questions, [[r] if r else [] for r in recitations], prompt_format=fmt,
               max_new_tokens=max_new_tokens, batch_size=batch_size)
    out.extra["recitations"] = recitations
    return out


METHODS = ("closed_book", "read", "replug", "recitation", "nli_filter")
NO_RETRIEVAL = ("closed_book", "recitation")


def answer_questions(method: str, model, tokenizer, questions: Sequence[str], passages: Sequence[Sequence[str]],
                     scores: Sequence[Sequence[float]], *, prompt_format: PromptFormat | None = None, judge=None,
                     max_new_tokens: int = 32, recitation_tokens: int = 96, replug_temperature: float = 1.0,
                     batch_size: int = 8) -> Answers:
    """One inference method on a batch of questions (``passages``/``scores`` from the retriever; ignored by
    closed_book and recitation):

    closed_book, read, recitation: see above;
    replug: REPLUG ensemble over the passages, weights softmax(scores / replug_temperature);
    nli_filter: 1. read with the passages, 2. answer closed-book, 3. ask ``judge`` whether the passages
        entail "question + answer", 4. keep the read answer where they do, else the closed-book one.
    """
    from generation.nli import nli_hypothesis, select_answers
    from generation.replug import replug_generate

    fmt = prompt_format or PromptFormat()
    kw = dict(prompt_format=fmt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if method == "closed_book":
        return read(model, tokenizer, questions, None, **kw)
    if method == "read":
        return read(model, tokenizer, questions, passages, **kw)
    if method == "recitation":
        return recite_and_answer(model, tokenizer, questions, recitation_tokens=recitation_tokens, **kw)
    if method == "replug":
        generations = replug_generate(model, tokenizer, questions, passages, scores, temperature=replug_temperature, **kw)
        prompts = [" || ".join(fmt.render(tokenizer, q, [d]) for d in docs) for q, docs in zip(questions, passages)]
        return Answers(prompts, generations, [first_line_answer(g) for g in generations])
    if method == "nli_filter":
        if judge is None:
            raise ValueError("nli_filter needs a judge (generation.nli.NLIClassifier or LMJudge)")
        rag = read(model, tokenizer, questions, passages, **kw)
        closed = read(model, tokenizer, questions, None, **kw)
        entailed = judge.entails(["\n\n".join(p) for p in passages],
                                 [nli_hypothesis(q, a) for q, a in zip(questions, rag.answers)])
        out = Answers(rag.prompts, rag.generations, select_answers(entailed, rag.answers, closed.answers))
        out.extra.update(entailed=entailed, rag_answers=rag.answers, closed_book_answers=closed.answers)
        return out
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
