"""A new self-correction task in one file (docs/methods/self_correction.md, "Adding a task"): spell a word
backwards. Importing this file registers it; a config names it ``tests.extension_examples.toy_task:reverse``
(``data.init_args.task``), and the DataModule, the evaluator and SCoRe then read, prompt, instruct and grade
with it. Nothing else in the repository changes."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tasks.registry import Task, register_task
from training.records import read_jsonl

INSTRUCTION = ("Check your answer letter by letter, from the last letter of the word to the first, and write "
               "the reversed word again.")


def load_reverse(source: str, role: str, options: None) -> list[dict]:
    """One problem per ``{"word": ...}`` line; the gold answer is the word reversed."""
    return [{"id": f"reverse/{line}", "task": "reverse", "problem": row["word"], "answer": row["word"][::-1]}
            for line, row in read_jsonl(source, {"word": str})]


def reverse_reward(responses: Sequence[str], examples: Sequence[dict]) -> list[float]:
    """1 when the response's last word (letters only, any case) is the reversed word, else 0."""
    last = [re.findall(r"[a-z]+", r.lower())[-1:] for r in responses]
    return [float(w == [ex["answer"]]) for w, ex in zip(last, examples)]


REVERSE = register_task(Task("reverse", kind="math", load=load_reverse, reward=reverse_reward,
                             prompt="Spell the word backwards. End with the reversed word alone.\n\nWord: {problem}",
                             test_file="tests/extension_examples/reverse.jsonl", instruction=INSTRUCTION))
