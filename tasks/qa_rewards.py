"""Outcome rewards for QA rollouts. They call the evaluation metrics of ``generation.qa_metrics``, so
the training reward and the reported EM/F1 are the same function.

Every reward has the signature ``reward(responses, examples) -> list[float]`` shared by all tasks (QA
here, math and code in ``tasks.loaders``): ``responses`` are the policy's texts only (never the prompt, whose
few-shot example may contain an ``<answer>``), ``examples`` the whole dataset rows, dicts; a QA example
holds its gold answer list under ``"answers"``.
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


def gold_answers(responses: Sequence[str], examples: Sequence[dict]) -> list[list[str]]:
    """The ``"answers"`` of each example, checked: one example per response, a non-empty list of strings."""
    if len(responses) != len(examples):
        raise ValueError(f"reward: {len(responses)} responses but {len(examples)} examples")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "answers" not in ex:
            raise ValueError(f"reward: examples[{i}] must be a dict with an 'answers' field, got {ex!r:.200}")
        a = ex["answers"]
        if isinstance(a, str) or not len(a) or not all(isinstance(x, str) for x in a):
            raise ValueError(f"reward: examples[{i}]['answers'] must be a non-empty list of strings, got {a!r}")
        out.append(list(a))
    return out


def _answer_reward(metric, responses: Sequence[str], examples: Sequence[dict]) -> list[float]:
    """metric(last <answer> of each response, its gold answers); 0 for a response without an answer."""
    answers = gold_answers(responses, examples)
    preds = (extract_answer(r) for r in responses)
    return [0.0 if pred is None else metric(pred, gold) for pred, gold in zip(preds, answers)]


def em_reward(responses: Sequence[str], examples: Sequence[dict]) -> list[float]:
    """r = EM(normalize(last <answer> of the response), example["answers"]) in {0, 1}; 0 without an answer."""
    return _answer_reward(exact_match, responses, examples)


def f1_reward(responses: Sequence[str], examples: Sequence[dict]) -> list[float]:
    """r = SQuAD token F1 of the last <answer> of the response against the best gold answer; 0 without one."""
    return _answer_reward(f1_score, responses, examples)


_FORMAT = re.compile(
    r"^\s*(<think>.*?</think>\s*)?"
    r"(<search>.*?</search>\s*<information>.*?</information>\s*(<think>.*?</think>\s*)?)*"
    r"<answer>.*?</answer>\s*$", re.DOTALL)


def format_reward(responses: Sequence[str], examples: Sequence[dict] | None = None) -> list[float]:
    """1 if the response follows ``[<think>] (<search> <information> [<think>])* <answer>`` and ends
    there, else 0 (an optional shaping term; Search-R1's paper uses EM alone)."""
    return [1.0 if _FORMAT.match(r) else 0.0 for r in responses]


class AnswerReward:
    """r = metric(last <answer> of the response, the example's answers) + format_weight * format_reward
    (format_weight 0: the paper's pure outcome reward). A callable ``reward(responses, examples)`` that a
    config names with ``class_path`` (SearchR1's ``reward``)."""

    metric = staticmethod(em_reward)

    def __init__(self, format_weight: float = 0.0):
        self.format_weight = format_weight

    def __call__(self, responses: Sequence[str], examples: Sequence[dict]) -> list[float]:
        r = self.metric(responses, examples)
        if self.format_weight:
            r = [x + self.format_weight * f for x, f in zip(r, format_reward(responses))]
        return r


class ExactMatch(AnswerReward):
    """EM of the last answer (:func:`em_reward`) + ``format_weight`` * format."""
    metric = staticmethod(em_reward)


class F1(AnswerReward):
    """Token F1 of the last answer (:func:`f1_reward`) + ``format_weight`` * format."""
    metric = staticmethod(f1_reward)


REWARDS = {"em": ExactMatch, "f1": F1}


def combined_reward(responses: Sequence[str], examples: Sequence[dict], kind: str = "em",
                    format_weight: float = 0.0) -> list[float]:
    """The reward named ``kind`` (``em``, ``f1``) with ``format_weight``: ``REWARDS[kind](format_weight)``."""
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[kind](format_weight)(responses, examples)
