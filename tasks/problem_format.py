"""How a problem is shown at the first attempt: a task's template (``tasks.prompts.PROMPTS`` or a literal),
demonstrations as earlier turns, the tokenizer's chat template or plain text. Used by the self-correction
DataModule, the two-attempt evaluation and SCoRe alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from generation.prompts import named_template, render_messages
from tasks.prompts import PROMPTS, demonstration, fill
from tasks.registry import get_task, task_kind


def resolve_prompt(prompt: str | None, task: str) -> str:
    """A first-attempt template by name (a key of ``PROMPTS``), None for the task's own (``Task.prompt``), or a
    literal template with a ``{problem}`` field (``{tests}``: MBPP's asserts, one per line)."""
    if prompt is None:
        prompt = get_task(task).prompt
    if prompt is None:
        if task_kind(task) != "math":
            raise ValueError(f"task {task!r} has no first-attempt prompt; pass a template (data.init_args.prompt)")
        prompt = "math"
    return named_template(prompt, PROMPTS, "problem")


def check_shot_attempts(shot_attempts: int) -> int:
    """``shot_attempts`` when it is 1 (each demonstration one exchange) or 2 (the whole two-attempt exchange)."""
    if shot_attempts not in (1, 2):
        raise ValueError(f"shot_attempts must be 1 or 2, got {shot_attempts!r}")
    return shot_attempts


@dataclass
class ProblemFormat:
    """How a problem is shown at the first attempt: ``prompt`` (a ``PROMPTS`` name, a literal template, or
    None for the task's default), ``shots`` (demonstration examples: each a problem and its worked answer,
    given as earlier user/assistant turns of the chat, or as "template + answer" blocks in plain text),
    ``chat`` (use the tokenizer's chat template when it has one) and ``shot_attempts``: 1 shows each
    demonstration as one exchange; 2 as the whole two-attempt exchange of self-correction (the problem, the
    worked answer, ``instruction``, the same worked answer again), so that a small model sees in context what
    follows the instruction. A kept correct answer, never a correction: the demonstrations show the format of
    attempt 2, not a way to correct. ``instruction`` is the two-attempt environment's (SCoRe sets it,
    :meth:`with_instruction`)."""
    prompt: str | None = None
    shots: Sequence[dict] = field(default_factory=tuple)
    chat: bool = True
    shot_attempts: int = 1
    instruction: str | None = None

    def __post_init__(self):
        check_shot_attempts(self.shot_attempts)

    def with_instruction(self, instruction: str) -> ProblemFormat:
        """This format with the two-attempt instruction its two-attempt demonstrations show."""
        return replace(self, instruction=instruction)

    def messages(self, example: dict, task: str) -> list[dict]:
        template, kind = resolve_prompt(self.prompt, task), task_kind(task)
        if self.shot_attempts == 2 and self.shots and not self.instruction:
            raise ValueError("ProblemFormat: shot_attempts 2 shows the two-attempt instruction in each demonstration "
                             "but none is set (ProblemFormat.with_instruction; SCoRe sets its environment's)")
        out = []
        for shot in self.shots:
            answer = demonstration(shot, kind)
            out += [{"role": "user", "content": fill(template, shot)}, {"role": "assistant", "content": answer}]
            if self.shot_attempts == 2:
                out += [{"role": "user", "content": self.instruction}, {"role": "assistant", "content": answer}]
        return out + [{"role": "user", "content": fill(template, example)}]

    def render(self, tokenizer, example: dict, task: str) -> str:
        # Plain text: each turn separated by a blank line; the model continues after the last problem.
        messages = [{**m, "content": m["content"].rstrip()} for m in self.messages(example, task)]
        return render_messages(tokenizer, messages, None if self.chat else False, separator="\n\n")


def render_problem(tokenizer, example: dict, task: str | None = None, prompt: str | None = None,
                   shots: Sequence[dict] = (), chat: bool = True) -> str:
    """The first-attempt prompt text of one example (task defaults to ``example["task"]``)."""
    return ProblemFormat(prompt, shots, chat).render(tokenizer, example, task or example["task"])
