"""Search-R1's instruction template and its rendering with a chat template."""

from __future__ import annotations

# The template of Search-R1 (Jin et al., 2025), verbatim apart from whitespace.
SEARCH_R1_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge needed, "
    "you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {question}\n")


def render_prompt(tokenizer, question: str, template: str = SEARCH_R1_TEMPLATE, chat: bool = True) -> str:
    """The prompt text for one question: ``template`` filled in, wrapped in the tokenizer's chat template
    (as a user turn, with the assistant header) when it has one and ``chat`` is set."""
    text = template.format(question=question.strip())
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text
