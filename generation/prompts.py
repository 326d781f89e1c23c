"""Prompt formats for retrieval-augmented QA, rendered through the tokenizer's chat template when it has
one, and answer extraction from generated text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

READ_TEMPLATE = ("Answer the question using the following information. Reply with a short answer only.\n\n"
                 "{context}\n\nQuestion: {question}")
CLOSED_BOOK_TEMPLATE = "Answer the question. Reply with a short answer only.\n\nQuestion: {question}"
PASSAGE_TEMPLATE = "Passage {index}: {passage}"


@dataclass
class PromptFormat:
    """How a question and its passages become the LM's prompt.

    Args:
        template: used when there are passages; ``{context}`` gets the numbered passages, ``{question}`` the input.
        closed_book_template: used with no passages.
        passage_template: one passage, with ``{index}`` (1-based) and ``{passage}``.
        answer_prefix: text the prompt ends with, that the model continues (after the chat template's
            assistant turn, if any), e.g. ``"Answer:"`` for a plain LM.
        system: optional system message (chat template only).
        chat: ``True`` forces the chat template, ``False`` disables it, ``None`` uses it when the
            tokenizer has one.
    """

    template: str = READ_TEMPLATE
    closed_book_template: str = CLOSED_BOOK_TEMPLATE
    passage_template: str = PASSAGE_TEMPLATE
    answer_prefix: str = ""
    system: str | None = None
    chat: bool | None = None

    def user_message(self, question: str, passages: Sequence[str] = ()) -> str:
        if not passages:
            return self.closed_book_template.format(question=question)
        context = "\n\n".join(self.passage_template.format(index=i + 1, passage=p) for i, p in enumerate(passages))
        return self.template.format(context=context, question=question)

    def render(self, tokenizer, question: str, passages: Sequence[str] = ()) -> str:
        """The full prompt string; with a chat template it already holds the special tokens, so tokenize
        it with ``add_special_tokens=False`` (see :func:`uses_chat`)."""
        return render_message(tokenizer, self.user_message(question, passages), self.system, self.chat,
                              self.answer_prefix)


def uses_chat(tokenizer, chat: bool | None = None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has:
        raise ValueError("PromptFormat(chat=True) but the tokenizer has no chat template")
    return has if chat is None else chat


def render_message(tokenizer, message: str, system: str | None = None, chat: bool | None = None,
                   answer_prefix: str = "") -> str:
    """One user message as a prompt: the chat template with the assistant turn opened, or the plain text
    followed by a newline. ``answer_prefix`` is appended in both cases."""
    if uses_chat(tokenizer, chat):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix
    return f"{message}\n{answer_prefix}"


_PREFIX = re.compile(r"^\s*(the\s+)?(final\s+)?answer\s*(is)?\s*[:\-]?\s*", re.IGNORECASE)


def extract_answer(generated: str) -> str:
    """The short answer in a generation: its first non-empty line, without an "Answer:" prefix, quotes or
    a trailing full stop. (EM/F1 normalisation happens later, in :mod:`generation.qa_metrics`.)"""
    lines = [line.strip() for line in generated.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    answer = _PREFIX.sub("", lines[0]).strip().strip('"').strip()
    return answer[:-1].strip() if answer.endswith(".") else answer
