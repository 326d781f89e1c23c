"""The SCoRe effect testbed's problems (docs/evidence/score_effect.md): additions with one- and two-digit operands,
the held-out test problems never among the training problems or the shots, through the DataModule the configs use."""

import re

import pytest

from datamodules.self_correction import SelfCorrectionDataModule
from tasks.arithmetic import ArithmeticOptions, arithmetic_problems, load_arithmetic


def pairs(rows: list[dict]) -> list[frozenset]:
    return [frozenset(map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", r["problem"]).groups())) for r in rows]


def test_one_and_two_digit_operands_with_held_out_problems_disjoint_from_training():
    dm = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 400, "digits": 2, "min_digits": 1,
                                                              "disjoint": True}, num_shots=4, limit_test=300)
    dm.setup("fit")
    test, train, shots = (pairs(dm.rows["test"]), pairs(dm.rows["train"]), pairs(dm.shots))
    assert len(test) == 300 and len(train) == 400
    operands = [x for p in train + test for x in p]
    assert min(operands) >= 1 and max(operands) <= 99 and any(x < 10 for x in operands)
    # the whole generated test split (400, of which the first 300 are evaluated) is excluded, in either order
    all_test = set(pairs(load_arithmetic("test", "test", ArithmeticOptions(400, 2, "+", 1, True))))
    assert not all_test & set(train) and not all_test & set(shots)
    # without `disjoint` the same draws overlap (the exclusion is doing the work)
    dm2 = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 400, "digits": 2, "min_digits": 1})
    dm2.setup("fit")
    assert set(pairs(dm2.rows["test"])) & set(pairs(dm2.rows["train"]))


def test_defaults_unchanged_and_bad_ranges_refused():
    assert arithmetic_problems(2, seed=0)[0] == {"id": "arithmetic2+/0/0", "task": "arithmetic",
                                                 "problem": "What is 59 + 63?", "answer": "122",
                                                 "solution": "59 + 63 = 122."}
    assert arithmetic_problems(50, 0, 2, "+", 2) == arithmetic_problems(50, 0)
    with pytest.raises(ValueError, match="min_digits must be in"):
        ArithmeticOptions(digits=2, min_digits=3)
    with pytest.raises(ValueError, match="every operand pair in \\[1, 9\\] is excluded"):
        arithmetic_problems(1, digits=1, exclude=frozenset(frozenset((a, b)) for a in range(1, 10) for b in range(1, 10)))
