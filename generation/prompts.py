"""Prompt formats for retrieval-augmented QA, rendered through the tokenizer's chat template when it has
one (:func:`render_message`, shared with ``rl.prompts``), and the short answer of a generation
(:func:`first_line_answer`; not ``tasks.qa_rewards.extract_answer``, which reads Search-R1's ``<answer>`` tags)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

READ_TEMPLATE = ("Answer the question using the following information. Reply with a short answer only.\n\n"
                 "{examples}{context}\n\nQuestion: {question}")
CLOSED_BOOK_TEMPLATE = "Answer the question. Reply with a short answer only.\n\n{examples}Question: {question}"
PASSAGE_TEMPLATE = "Passage {index}: {passage}"
EXAMPLE_TEMPLATE = "Question: {question}\nAnswer: {answer}\n\n"

# Four demonstrations from the NQ pool's TRAIN split (ids q0, q25, q43, q7: a person, a place, a year, a
# number), never from dev/test. SmolLM2-135M-Instruct answers zero-shot in full sentences (EM 0 on every
# row); with these demonstrations, as plain text ending in "Answer:", it gives short answers.
NQ_EXAMPLES = [["who got the first nobel prize in physics", "Wilhelm Conrad Röntgen"],
               ["what is the name of manchester united stadium", "Old Trafford"],
               ["when was the first documented case of tool mark identification", "1835"],
               ["how many episodes are there in dragon ball z", "291"]]


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
        examples: few-shot demonstrations, ``[question, answer]`` pairs, rendered with ``example_template``
            at the templates' ``{examples}`` field (both templates must have one when examples are given).
    """

    template: str = READ_TEMPLATE
    closed_book_template: str = CLOSED_BOOK_TEMPLATE
    passage_template: str = PASSAGE_TEMPLATE
    answer_prefix: str = ""
    system: str | None = None
    chat: bool | None = None
    examples: list[list[str]] = field(default_factory=list)
    example_template: str = EXAMPLE_TEMPLATE

    def __post_init__(self):
        for i, ex in enumerate(self.examples):
            if isinstance(ex, str) or len(ex) != 2 or not all(isinstance(x, str) and x.strip() for x in ex):
                raise ValueError(f"PromptFormat.examples[{i}]: expected a [question, answer] pair of non-empty "
                                 f"strings, got {ex!r}")
        if self.examples:
            for name in ("template", "closed_book_template"):
                if "{examples}" not in getattr(self, name):
                    raise ValueError(f"PromptFormat.{name} has no {{examples}} field, so its {len(self.examples)} "
                                     "examples would be dropped; add {examples} where they belong")

    def demonstrations(self) -> str:
        return "".join(self.example_template.format(question=q, answer=a) for q, a in self.examples)

    def user_message(self, question: str, passages: Sequence[str] = ()) -> str:
        examples = self.demonstrations()
        if not passages:
            return self.closed_book_template.format(question=question, examples=examples)
        context = "\n\n".join(self.passage_template.format(index=i + 1, passage=p) for i, p in enumerate(passages))
        return self.template.format(context=context, question=question, examples=examples)

    def render(self, tokenizer, question: str, passages: Sequence[str] = ()) -> str:
        """The full prompt string; with a chat template it already holds the special tokens, so tokenize
        it with ``add_special_tokens=False`` (see :func:`uses_chat`)."""
        return render_message(tokenizer, self.user_message(question, passages), self.system, self.chat,
                              self.answer_prefix)


PRESETS = {
    # The instruction as a chat turn, zero-shot: for instruct LMs that follow "short answer only".
    "zero_shot_chat": lambda: PromptFormat(),
    # Plain text with four NQ-train demonstrations, continuing "Answer:": SmolLM2-135M's short answers.
    "few_shot": lambda: PromptFormat(chat=False, answer_prefix="Answer:", examples=[list(e) for e in NQ_EXAMPLES]),
}


def prompt_format(prompt: "str | PromptFormat | None") -> "PromptFormat":
    """A :class:`PromptFormat` from a preset name (a key of ``PRESETS``), a PromptFormat, or None (zero-shot chat)."""
    if prompt is None:
        return PromptFormat()
    if isinstance(prompt, PromptFormat):
        return prompt
    if prompt not in PRESETS:
        raise ValueError(f"unknown prompt preset {prompt!r}; expected one of {sorted(PRESETS)} or a PromptFormat")
    return PRESETS[prompt]()


def uses_chat(tokenizer, chat: bool | None = None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has:
        raise ValueError("PromptFormat(chat=True) but the tokenizer has no chat template")
    return has if chat is None else chat


def named_template(value: str, templates: dict[str, str], field: str) -> str:
    """A prompt template by name (a key of ``templates``) or a literal template containing ``{field}``; the one
    rule for the Search-R1 templates and the self-correction first-attempt prompts."""
    if value in templates:
        return templates[value]
    if "{" + field + "}" not in value:
        raise ValueError(f"prompt template {value[:60]!r}: neither a known name {sorted(templates)} nor a template "
                         f"with a {{{field}}} field")
    return value


def render_messages(tokenizer, messages: Sequence[dict], chat: bool | None = None, answer_prefix: str = "",
                    separator: str = "\n") -> str:
    """Chat turns (``[{"role", "content"}, ...]``) as a prompt, the one renderer of every method: the chat
    template with the assistant turn opened, or (no chat) each turn's content followed by ``separator``.
    ``answer_prefix`` is appended in both cases. ``chat``: True forces the chat template, False disables it,
    None uses it when the tokenizer has one."""
    if uses_chat(tokenizer, chat):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) + answer_prefix
    return "".join(m["content"] + separator for m in messages) + answer_prefix


def render_message(tokenizer, message: str, system: str | None = None, chat: bool | None = None,
                   answer_prefix: str = "", separator: str = "\n") -> str:
    """One user message (after an optional system message, chat template only) through :func:`render_messages`:
    RAG prompts, the NLI judge, HyDE/LameR and Search-R1 prompts."""
    if uses_chat(tokenizer, chat):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        return render_messages(tokenizer, messages, True, answer_prefix)
    return render_messages(tokenizer, [{"role": "user", "content": message}], False, answer_prefix, separator)


_PREFIX = re.compile(r"^\s*(the\s+)?(final\s+)?answer\s*(is)?\s*[:\-]?\s*", re.IGNORECASE)


def first_line_answer(generated: str) -> str:
    """The short answer in a generation: its first non-empty line, without an "Answer:" prefix, quotes or
    a trailing full stop. (EM/F1 normalisation happens later, in :mod:`generation.qa_metrics`.)"""
    lines = [line.strip() for line in generated.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    answer = _PREFIX.sub("", lines[0]).strip().strip('"').strip()
    return answer[:-1].strip() if answer.endswith(".") else answer
