"""Deliberate one-line bugs in choosing the fusion weight on dev (retrieval/fusion_tuning.py); each must make the
named tests fail. Run: .venv/bin/python tests/mutation_check.py --area scifact"""

T = "tests/test_fusion_tuning.py"
CHOICE = [f"{T}::test_dev_choice_differs_from_the_test_best_weight"]
LEAK = [f"{T}::test_test_judgements_cannot_reach_the_choice"]

MUTATIONS = [
    {"name": "weight_chosen_on_test", "file": "retrieval/fusion_tuning.py",
     "old": "    dev = sweep(sparse, dense, dev_qrels, weights", "new": "    dev = sweep(sparse, dense, test_qrels, weights",
     "tests": CHOICE + LEAK},
    {"name": "weight_argmin", "file": "retrieval/fusion_tuning.py",
     "old": "return max(scores, key=", "new": "return min(scores, key=", "tests": CHOICE},
    {"name": "weights_swapped", "file": "retrieval/fusion_tuning.py",
     "old": "weights = [w_bm25, 1.0 - w_bm25]", "new": "weights = [1.0 - w_bm25, w_bm25]",
     "tests": CHOICE + [f"{T}::test_rrf_weights_follow_w_bm25"]},
    {"name": "test_scored_at_the_test_best", "file": "retrieval/fusion_tuning.py",
     "old": "    w = best_weight(dev)\n", "new": "    w = best_weight(sweep(sparse, dense, test_qrels, weights, depth, metric, **fusion))\n",
     "tests": CHOICE},
    {"name": "ties_go_to_the_last", "file": "retrieval/fusion_tuning.py",
     "old": "(scores[w], -list(scores).index(w))", "new": "(scores[w], list(scores).index(w))",
     "tests": [f"{T}::test_ties_go_to_the_first_weight_listed"]},
    {"name": "paired_se_population_std", "file": "retrieval/fusion_tuning.py",
     "old": "/ (len(diffs) - 1)", "new": "/ len(diffs)",
     "tests": [f"{T}::test_per_query_ndcg_and_paired_difference_by_hand"]},
]
