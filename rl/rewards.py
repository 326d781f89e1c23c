"""Outcome rewards for QA rollouts. They call the evaluation metrics of ``generation.qa_metrics``, so
the training reward and the reported EM/F1 are the same function.

Every reward has the signature ``reward(responses, answers) -> list[float]``: ``responses`` are the
policy's generated texts only (never the prompt, whose few-shot example may contain an ``<answer>``),
``answers`` the gold answer lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from generation.qa_metrics import exact_match, f1_score

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(response: str) -> str | None:
    """The text of the LAST complete ``<answer>...</answer>`` of a response, stripped; None if there is none.

    Search-R1's reference code searches prompt+response, so the prompt's example answer can be taken
    for the model's; pass the response alone.
    """
    matches = _ANSWER.findall(response)
    return matches[-1].strip() if matches else None


def _check(responses: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
    if len(responses) != len(answers):
        raise ValueError(f"reward: {len(responses)} responses but {len(answers)} answer lists")
    for i, a in enumerate(answers):
        if isinstance(a, str) or not len(a):
            raise ValueError(f"reward: answers[{i}] must be a non-empty list of strings, got {a!r}")


def _answer_reward(metric, responses: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
    """metric(last <answer> of each response, its gold answers); 0 for a response without an answer."""
    _check(responses, answers)
    preds = (extract_answer(r) for r in responses)
    return [0.0 if pred is None else metric(pred, gold) for pred, gold in zip(preds, answers)]


def em_reward(responses: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
    """r = EM(normalize(last <answer> of the response), gold answers) in {0, 1}; 0 without an answer."""
    return _answer_reward(exact_match, responses, answers)


def f1_reward(responses: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
    """r = SQuAD token F1 of the last <answer> of the response against the best gold answer; 0 without one."""
    return _answer_reward(f1_score, responses, answers)


_FORMAT = re.compile(
    r"^\s*(<think>.*?</think>\s*)?"
    r"(<search>.*?</search>\s*<information>.*?</information>\s*(<think>.*?</think>\s*)?)*"
    r"<answer>.*?</answer>\s*$", re.DOTALL)


def format_reward(responses: Sequence[str], answers: Sequence[Sequence[str]] | None = None) -> list[float]:
    """1 if the response follows ``[<think>] (<search> <information> [<think>])* <answer>`` and ends
    there, else 0 (an optional shaping term; Search-R1's paper uses EM alone)."""
    return [1.0 if _FORMAT.match(r) else 0.0 for r in responses]


REWARDS = {"em": em_reward, "f1": f1_reward}


def combined_reward(responses: Sequence[str], answers: Sequence[Sequence[str]], kind: str = "em",
                    format_weight: float = 0.0) -> list[float]:
    """r = outcome(kind) + format_weight * format (format_weight 0: the paper's pure outcome reward)."""
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; expected one of {sorted(REWARDS)}")
    r = REWARDS[kind](responses, answers)
    if format_weight:
        r = [x + format_weight * f for x, f in zip(r, format_reward(responses))]
    return r
