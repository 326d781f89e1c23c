"""EM / F1 with SQuAD answer normalisation and answer recall, checked against hand computations."""

from __future__ import annotations

import pytest

from generation.qa_metrics import answer_recall_at_k, exact_match, f1_score, has_answer, normalize_answer


def test_normalisation_by_hand():
    # lower-case, punctuation dropped, articles a/an/the dropped, whitespace squashed
    assert normalize_answer("  The  Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # 'the' only as a whole word
    # SQuAD's order: punctuation goes first, so "The-Beatles" becomes one token and keeps its article
    assert normalize_answer("The-Beatles") == "thebeatles"
    assert exact_match("The-Beatles", ["Beatles"]) == 0.0 and exact_match("The Beatles", ["Beatles"]) == 1.0


def test_exact_match_by_hand():
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower", "Paris"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("paris", ["London", "PARIS"]) == 1.0


def test_f1_by_hand():
    # prediction "william shakespeare wrote" vs gold "shakespeare": common = 1,
    # precision = 1/3, recall = 1/1, F1 = 2 * (1/3) * 1 / (1/3 + 1) = (2/3) / (4/3) = 0.5
    assert f1_score("William Shakespeare wrote", ["Shakespeare"]) == pytest.approx(0.5)
    # against several answers the best one counts: vs "William Shakespeare": common = 2, P = 2/3, R = 1,
    # F1 = 2 * (2/3) / (5/3) = 0.8
    assert f1_score("William Shakespeare wrote", ["Shakespeare", "William Shakespeare"]) == pytest.approx(0.8)
    # articles and punctuation do not count as tokens: "the 8th season." -> ["8th", "season"] vs ["eighth", "season"]
    # common = 1, P = 1/2, R = 1/2, F1 = 0.5
    assert f1_score("the 8th season.", ["eighth season"]) == pytest.approx(0.5)
    assert f1_score("", ["x"]) == 0.0 and f1_score("the", ["a"]) == 1.0  # both empty after normalisation


def test_answer_recall_by_hand():
    assert has_answer("It was written by William Shakespeare in 1600.", ["william shakespeare"])
    assert not has_answer("Shakespearean drama", ["Shakespeare"])  # whole tokens only
    retrieved = [["no answer here", "Paris is in France"], ["nothing", "nothing either"]]
    answers = [["Paris"], ["Rome"]]
    # question 1 has its answer at rank 2, question 2 never: recall@1 = 0/2, recall@2 = 1/2
    assert answer_recall_at_k(retrieved, answers, 1) == 0.0
    assert answer_recall_at_k(retrieved, answers, 2) == 0.5
    with pytest.raises(ValueError):
        answer_recall_at_k(retrieved, answers[:1], 1)
