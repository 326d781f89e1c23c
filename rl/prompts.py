"""Search-R1's instruction template, a one-shot variant for small policies, and prompt rendering."""

from __future__ import annotations

from generation.prompts import named_template, render_message
from rl.search import Passage, format_information

# The template of Search-R1 (Jin et al., 2025), verbatim apart from whitespace.
SEARCH_R1_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge needed, "
    "you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {question}\n")

# The same instruction followed by one worked trajectory (search, information, answer). The paper's 3B-7B
# policies follow the protocol zero-shot; SmolLM2-135M does not (measured: 0 of 64 sampled rollouts search
# with the paper's prompt in its chat template, 27% with this one as plain text), so a learning run
# at 135M starts from this prompt. The example is invented, and not from the NQ pool.
# The information block is rendered exactly as the search tool inserts it (rl.search, rl.rollout).
ONE_SHOT_EXAMPLE = (
    "Example:\nQuestion: who wrote the novel moby dick\n<search> moby dick author </search>\n\n"
    + format_information([Passage("example", "Moby-Dick", "Moby-Dick is an 1851 novel by American writer Herman "
                                  "Melville.", 0.0)])
    + "\n\n<answer> Herman Melville </answer>\n\n")
SEARCH_R1_ONE_SHOT_TEMPLATE = SEARCH_R1_TEMPLATE.replace("Question: {question}\n", ONE_SHOT_EXAMPLE + "Question: {question}\n")

TEMPLATES = {"search_r1": SEARCH_R1_TEMPLATE, "search_r1_one_shot": SEARCH_R1_ONE_SHOT_TEMPLATE}


def resolve_template(template: str) -> str:
    """A template by name (a key of ``TEMPLATES``) or a literal template containing ``{question}``."""
    return named_template(template, TEMPLATES, "question")


def render_prompt(tokenizer, question: str, template: str = "search_r1", chat: bool = True) -> str:
    """The prompt text for one question: ``template`` (a name or a literal) filled in, wrapped in the
    tokenizer's chat template (as a user turn, with the assistant header) when it has one and ``chat`` is set,
    by the one renderer, :func:`generation.prompts.render_message` (plain text as is: the template ends the line)."""
    text = resolve_template(template).format(question=question.strip())
    return render_message(tokenizer, text, chat=None if chat else False, separator="")
