"""The SCoRe effect testbed's problems (docs/evidence/score_effect.md): additions with one- and two-digit operands,
the held-out test problems never among the training problems or the shots, through the DataModule the configs use."""

import re

import pytest
from transformers import AutoTokenizer

from datamodules.self_correction import SelfCorrectionDataModule
from lightning_modules.score import SCoRe
from rl.envs import TwoAttemptEnv
from rl.self_correction import two_attempt_env
from tasks.arithmetic import ArithmeticOptions, arithmetic_problems, load_arithmetic
from tasks.problem_format import ProblemFormat
from tasks.prompts import demonstration
from tasks.registry import task_instruction
from training.settings import LM


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


# -- design D/E: demonstrations as whole two-attempt exchanges (data.init_args.shot_attempts 2) -------------------

def test_two_attempt_demonstrations_show_what_the_environment_appends(tiny_llama_dir):
    """Each shot is problem, answer, the module's instruction exactly as the environment appends it after an
    attempt that ended with EOS, the same answer; the problem asked is not followed by the instruction."""
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    dm = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 20, "digits": 2}, num_shots=3,
                                  shot_attempts=2, limit_test=5)
    dm.setup("fit")
    model = SCoRe(LM(tiny_llama_dir), task="arithmetic", instruction="Check it once more.")
    model.setup("fit", dm)
    assert model.format.instruction == "Check it once more."
    text = model.format.render(tok, dm.rows["test"][0], "arithmetic")
    env = two_attempt_env(tok, "arithmetic", "Check it once more.")
    for shot in dm.shots:
        answer = demonstration(shot, "math")
        assert text.count(answer) == 2
        assert answer + tok.eos_token + env.text_after(True) + answer + tok.eos_token in text
    assert text.count("Check it once more.") == 3
    assert text.endswith(dm.rows["test"][0]["problem"] + tok.eos_token + "\n<|im_start|>assistant\n")
    # one-attempt demonstrations (the default) show no instruction; the default instruction is the task's
    one = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 20, "digits": 2}, num_shots=3)
    one.setup("fit")
    assert "Check it once more." not in one.problem_format.render(tok, dm.rows["test"][0], "arithmetic")
    default = SCoRe(LM(tiny_llama_dir), task="arithmetic")
    default.setup("fit", dm)
    assert default.format.instruction == task_instruction("arithmetic")
    assert default.format.render(tok, dm.rows["test"][0], "arithmetic").count(task_instruction("arithmetic")) == 3


def test_two_attempt_demonstrations_refuse_what_they_cannot_show(tiny_llama_dir):
    shot = {"id": "s", "task": "arithmetic", "problem": "What is 1 + 2?", "answer": "3", "solution": "1 + 2 = 3."}
    with pytest.raises(ValueError, match="none is set"):
        ProblemFormat(shots=[shot], shot_attempts=2).messages(shot, "arithmetic")
    with pytest.raises(ValueError, match="shot_attempts must be 1 or 2"):
        ProblemFormat(shot_attempts=3)
    with pytest.raises(ValueError, match="shot_attempts must be 1 or 2"):
        SelfCorrectionDataModule(task="arithmetic", shot_attempts=0)
    dm = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 20, "digits": 2}, num_shots=1,
                                  shot_attempts=2, limit_test=2)
    dm.setup("fit")
    model = SCoRe(LM(tiny_llama_dir), task="arithmetic", env=TwoAttemptEnv("Again."))
    with pytest.raises(ValueError, match="with env given, use shot_attempts 1"):
        model.setup("fit", dm)
