"""Deliberate one-line bugs that would remove RetRobust's mechanism; each must make the toy-scale test fail.
Run: .venv/bin/python tests/mutation_check.py --area retrobust_mechanism"""

T = ["tests/test_retrobust_mechanism.py::test_mixed_contexts_teach_answering_against_a_misleading_context_top1_only_teaches_copying"]

MUTATIONS = [
    {"name": "context_kinds_ignore_the_proportions", "file": "datamodules/retrobust.py",
     "old": "    return rng.choices(KINDS, weights=list(proportions), k=n)",
     "new": "    return rng.choices(KINDS, k=n)", "tests": T},
    {"name": "context_kinds_proportions_reversed", "file": "datamodules/retrobust.py",
     "old": "    return rng.choices(KINDS, weights=list(proportions), k=n)",
     "new": "    return rng.choices(KINDS, weights=list(proportions)[::-1], k=n)", "tests": T},
]
