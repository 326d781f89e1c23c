"""Open-domain QA metrics with SQuAD answer normalisation. The RL rewards call these same functions,
so training and evaluation cannot drift apart."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop punctuation, drop articles (a/an/the), squash whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token-level F1 against the best-matching gold answer."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether any normalised gold answer occurs in the normalised text as a whole-token span (DPR's
    answer-recall test, on SQuAD-normalised tokens)."""
    tokens = normalize_answer(text).split()
    for answer in answers:
        a = normalize_answer(answer).split()
        if a and any(tokens[i:i + len(a)] == a for i in range(len(tokens) - len(a) + 1)):
            return True
    return False


def answer_recall_at_k(retrieved: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], k: int) -> float:
    """Fraction of questions whose top-``k`` retrieved passages contain a gold answer."""
    if len(retrieved) != len(answers):
        raise ValueError(f"answer_recall_at_k: {len(retrieved)} rankings but {len(answers)} answer lists")
    if not retrieved:
        raise ValueError("answer_recall_at_k: no questions")
    return sum(any(has_answer(p, ans) for p in passages[:k]) for passages, ans in zip(retrieved, answers)) / len(retrieved)
