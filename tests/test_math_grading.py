"""Answer extraction and equivalence on hand-checked cases. Gold answers are MATH-500's (unique_id given);
each "equal" prediction is a form a model writes for the same value, each "not equal" one a near miss that a
sloppy normaliser would accept."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.math_grading import extract_answer_math, is_equiv, math_reward, normalize
from tasks.math_pool import MathPool

ROOT = Path(__file__).resolve().parent.parent
MATH500 = {json.loads(line)["unique_id"]: json.loads(line) for line in open(ROOT / "data/math500/test.jsonl")}

# (MATH-500 unique_id, prediction, equal?)  - the gold is MATH500[uid]["answer"], shown in the comment
CASES = [
    ("test/precalculus/807.json", "(3, \\frac{\\pi}{2})", True),  # \left( 3, \frac{\pi}{2} \right)
    ("test/precalculus/807.json", "(3, \\pi)", False),
    ("test/precalculus/807.json", "[3, \\frac{\\pi}{2}]", False),  # brackets matter for a point/interval
    ("test/algebra/2584.json", "\\dfrac{14}{3}", True),  # \frac{14}{3}
    ("test/algebra/2584.json", "14/3", True),
    ("test/algebra/2584.json", "4\\frac{2}{3}", True),  # mixed number
    ("test/algebra/2584.json", "4.67", False),  # rounded decimal is not the exact value
    ("test/algebra/1349.json", "Evelyn", True),  # \text{Evelyn}
    ("test/algebra/1349.json", "\\text{Evelin}", False),
    ("test/precalculus/927.json", "90", True),  # 90^\circ
    ("test/precalculus/927.json", "90^{\\circ}", True),
    ("test/precalculus/927.json", "\\frac{\\pi}{2}", False),  # radians are not what was asked
    ("test/algebra/2036.json", "\\sqrt{117}", True),  # 3\sqrt{13}: symbolic
    ("test/algebra/2036.json", "3\\sqrt{31}", False),
    ("test/intermediate_algebra/1388.json", "-2, 1", True),  # 1,-2 (order-free list of solutions)
    ("test/intermediate_algebra/1388.json", "1", False),
    ("test/prealgebra/1302.json", "11\\sqrt{2}", True),  # 11\sqrt2
    ("test/intermediate_algebra/662.json", "1+\\sqrt{19}, 1-\\sqrt{19}", True),  # 1 \pm \sqrt{19}
    ("test/intermediate_algebra/662.json", "1+\\sqrt{19}", False),
    ("test/precalculus/1300.json", "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}", True),
    ("test/precalculus/1300.json", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 3/5 \\end{pmatrix}", False),
    ("test/intermediate_algebra/558.json", "(3, 4]", True),  # (3,4]
    ("test/intermediate_algebra/558.json", "(3,4)", False),  # open vs closed end
    ("test/intermediate_algebra/558.json", "[3,4]", False),
    ("test/intermediate_algebra/515.json", "\\frac{4}{3}", True),  # \frac43
    ("test/intermediate_algebra/515.json", "1.\\overline{3}", False),  # not parsed as 4/3: conservative
    ("test/prealgebra/1003.json", "\\frac{270}{7}", True),  # \frac{270}7\text{ degrees}
    ("test/prealgebra/1003.json", "\\frac{270}{7} degrees", True),
    ("test/prealgebra/1003.json", "38.57", False),
    ("test/intermediate_algebra/183.json", "(2, \\infty)", True),  # (2,\infty)
    ("test/intermediate_algebra/183.json", "[2,\\infty)", False),
    ("test/counting_and_probability/508.json", "10080", True),  # 10,\!080 (thousands separator)
    ("test/counting_and_probability/508.json", "10,080", True),
    ("test/counting_and_probability/508.json", "1008", False),
    ("test/number_theory/417.json", "11111111100", True),  # 11,\! 111,\! 111,\! 100
    ("test/number_theory/417.json", "11,111,111,000", False),
    ("test/algebra/2626.json", "32348", True),  # \$32,\!348 (dollars)
    ("test/algebra/2626.json", "\\$32,348.00", True),
    ("test/algebra/2780.json", "18.9", True),  # \$18.90
    ("test/algebra/2780.json", "\\$18.09", False),
    ("test/precalculus/920.json", "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}", True),  # pmatrix
    ("test/precalculus/920.json", "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}", False),
    ("test/precalculus/819.json", "C", True),  # \text{(C)}
    ("test/precalculus/819.json", "(C)", True),
    ("test/precalculus/819.json", "\\text{(D)}", False),
    ("test/geometry/826.json", "\\frac{9}{5}", True),  # 1\frac{4}{5}
    ("test/geometry/826.json", "1.8", True),
    ("test/geometry/826.json", "\\frac{4}{5}", False),
    ("test/prealgebra/1044.json", "5.4", True),  # 5.4 \text{ cents}
    ("test/prealgebra/1044.json", "5.40 cents", True),
    ("test/prealgebra/1044.json", "54", False),
    ("test/algebra/2486.json", "(\\frac35, \\frac83]", True),  # \left(\frac{3}{5},\frac{8}{3}\right]
    ("test/algebra/2486.json", "(0.6, \\frac{8}{3}]", True),
    ("test/algebra/2486.json", "(\\frac{3}{5}, \\frac{8}{3})", False),
    ("test/intermediate_algebra/1992.json", "(9,36) \\cup (0,9)", True),  # (0,9) \cup (9,36)
    ("test/intermediate_algebra/1992.json", "(0,36)", False),
    ("test/algebra/101.json", "[-2,7]", True),  # x \in [-2,7]
    ("test/algebra/101.json", "(-2,7)", False),
    ("test/intermediate_algebra/2015.json", "\\{-2, 1+\\sqrt{5}, 1-\\sqrt{5}\\}", True),  # \{1\pm\sqrt{5},-2\}
    ("test/intermediate_algebra/2015.json", "\\{-2, 1+\\sqrt{5}\\}", False),
    ("test/algebra/2735.json", "\\frac{9a+11}{20}", True),  # \frac{11+9a}{20}: symbolic with a variable
    ("test/algebra/2735.json", "\\frac{9a+11}{2}", False),
    ("test/precalculus/1281.json", "11(\\sqrt{5}+1)", True),  # 11 \sqrt{5} + 11
    ("test/algebra/1519.json", "\\frac{1}{\\sqrt{3}}", True),  # \frac{\sqrt{3}}{3}: rationalised or not
    ("test/algebra/1519.json", "\\frac{1}{3}", False),
    ("test/algebra/2470.json", "137.5", True),  # 137 \frac{1}{2}
    ("test/algebra/2470.json", "\\frac{275}{2}", True),
    ("test/algebra/2470.json", "68.5", False),
    ("test/counting_and_probability/282.json", "0.5", True),  # \frac{1}{2}
    ("test/counting_and_probability/282.json", "\\frac12", True),
    ("test/counting_and_probability/282.json", ".5", True),
    ("test/counting_and_probability/282.json", "0.51", False),
    ("test/precalculus/499.json", "[\\frac{\\pi^2}{8}, \\frac{5\\pi^2}{4}]", True),
    ("test/precalculus/499.json", "[\\frac{\\pi^2}{8}, \\frac{5\\pi}{4}]", False),
    ("test/intermediate_algebra/428.json", "7, 5, 3", True),  # 3, 5, 7
    ("test/intermediate_algebra/428.json", "3, 5", False),
    ("test/intermediate_algebra/956.json", "(6, 31, -1)", True),  # (6,31,-1)
    ("test/intermediate_algebra/956.json", "(6,-1,31)", False),  # a tuple is ordered
    ("test/precalculus/1105.json", "-\\pi/6", True),  # -\frac{\pi}{6}
    ("test/precalculus/1105.json", "\\frac{\\pi}{6}", False),
    ("test/algebra/2253.json", "\\frac{3}{4}\\sqrt{3}", True),  # \frac{3\sqrt{3}}{4}
    ("test/algebra/2253.json", "\\frac{3\\sqrt{3}}{2}", False),
    ("test/precalculus/768.json", "3-2\\sqrt{2}, 3+2\\sqrt2", True),  # 3 \pm 2 \sqrt{2}
    ("test/precalculus/768.json", "3 \\pm \\sqrt{2}", False),
    ("test/counting_and_probability/737.json", "58500", True),  # 58,500
    ("test/counting_and_probability/737.json", "58.5", False),  # a comma is not a decimal point
    ("test/precalculus/695.json", "(-\\infty,0]", True),  # (-\infty, 0]
    ("test/precalculus/695.json", "(-\\infty, 0)", False),
    ("test/algebra/2043.json", "(3,\\infty)\\cup(-\\infty,2)", True),  # (-\infty, 2) \cup (3, \infty)
    ("test/algebra/2043.json", "(-\\infty,2]\\cup[3,\\infty)", False),
    ("test/prealgebra/1512.json", "\\pi \\cdot 7", True),  # 7\pi
    ("test/prealgebra/1512.json", "22", False),
    ("test/intermediate_algebra/1111.json", "20000/\\pi", True),  # \frac{20000}{\pi}
    ("test/intermediate_algebra/1111.json", "\\frac{20000}{\\pi^2}", False),
    ("test/intermediate_algebra/860.json", "ellipse", True),  # \text{ellipse}
    ("test/intermediate_algebra/860.json", "\\text{parabola}", False),
    ("test/intermediate_algebra/128.json", "\\textbf{even}", True),  # \text{even}
    ("test/intermediate_algebra/128.json", "odd", False),
]


@pytest.mark.parametrize("uid,pred,equal", CASES, ids=[f"{u.split('/')[-2]}-{u.split('/')[-1][:-5]}-{k}"
                                                         for k, (u, _, _) in enumerate(CASES)])
def test_math500_cases(uid, pred, equal):
    gold = MATH500[uid]["answer"]
    assert is_equiv(pred, gold) is equal, (pred, gold, normalize(pred), normalize(gold))


def test_table_is_large_and_balanced():
    assert len({c[0] for c in CASES}) >= 40
    assert sum(c[2] for c in CASES) >= 30 and sum(not c[2] for c in CASES) >= 30


def test_no_solution_synonyms():
    assert is_equiv("\\text{no solution}", "\\text{No solution}")
    assert is_equiv("none", "\\emptyset")
    assert not is_equiv("0", "\\text{no solution}")


def test_every_math500_solution_box_equals_its_answer():
    # The reward's extraction + equivalence agree with the dataset's own answer field on all 500 problems,
    # and a shifted pairing (each solution against the next problem's answer) is mostly judged not equal.
    rows = list(MATH500.values())
    assert all(is_equiv(extract_answer_math(r["solution"], fallback_last_number=False), r["answer"]) for r in rows)
    shifted = sum(is_equiv(extract_answer_math(a["solution"]), b["answer"]) for a, b in zip(rows, rows[1:]))
    assert shifted <= 10


@pytest.mark.parametrize("text,expected", [
    ("so the area is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{\\left\\{ \\frac{a}{b} \\right\\}}", "\\left\\{ \\frac{a}{b} \\right\\}"),
    ("nested \\boxed{\\sqrt{\\frac{1}{\\{2\\}}}} end", "\\sqrt{\\frac{1}{\\{2\\}}}"),
    ("the answer is \\fbox{42}", "42"),
    ("thus $\\boxed 7$.", "7"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $(1,2)$. I hope it is correct.", "(1,2)"),
    ("Final Answer: The final answer is 12. I hope it is correct.", "12"),
    # without "I hope it is correct": the sentence's full stop is not part of the answer (the dollars are stripped)
    ("Final Answer: The final answer is $12$.", "12"),
    ("The final answer is $\\frac{1}{2}$.\nDone.", "\\frac{1}{2}"),
    ("The final answer is 3.5", "3.5"),
    ("I guessed \\boxed{5}.\nFinal Answer: The final answer is $6$. I hope it is correct.", "6"),  # last wins
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("She pays 1,200 + 300 = 1,500 dollars.\n#### 1,500", "1,500"),
    ("no marker here, 3 apples and 4.5 pears", "4.5"),
    ("costs $1,234 in total", "1,234"),
    ("unclosed \\boxed{3 and then 17", "17"),
])
def test_extraction(text, expected):
    assert extract_answer_math(text) == expected


def test_fallback_can_be_switched_off():
    assert extract_answer_math("no marker, 3 apples", fallback_last_number=False) is None
    assert extract_answer_math("3 apples", fallback_last_number=True) == "3"


def test_gsm8k_extraction_on_real_rows():
    rows = [json.loads(line) for line in open(ROOT / "data/gsm8k/test.jsonl")][:200]
    golds = [r["answer"].split("####")[-1].strip().replace(",", "") for r in rows]
    assert all(is_equiv(extract_answer_math(r["answer"]), g) for r, g in zip(rows, golds))
    assert is_equiv("1,500", "1500") and not is_equiv("1,501", "1500") and not is_equiv("150", "1500")
    # the fallback takes the LAST number: an answer stated before further text is not found
    assert not is_equiv(extract_answer_math("The answer is 18. I used 3 steps."), "18")


def test_math_reward_signature_and_values():
    examples = [{"answer": "\\frac{1}{2}"}, {"answer": "72"}, {"answer": "(3,4]"}, {"answer": "5"}]
    responses = ["... so $\\boxed{0.5}$", "#### 72", "Final Answer: The final answer is $(3,4)$. I hope it is correct.",
                 "no answer"]
    assert math_reward(responses, examples) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="examples\\[0\\] needs a string 'answer'"):
        math_reward(["x"], [{"answer": 5}])
    with pytest.raises(ValueError, match="2 responses but 1 examples"):
        math_reward(["a", "b"], [{"answer": "1"}])


def test_symbolic_check_is_killed_on_timeout():
    # An identity whose proof (simplify of a degree-600 polynomial) runs far past the limit: the worker is
    # killed, the pair is judged not equal, and the next check works (a fresh worker).
    pool = MathPool(size=1)
    try:
        assert pool.equal(["sym", "x"], ["sym", "x"], ["exact"], timeout=60.0) is True  # the worker is up
        start = time.monotonic()
        assert is_equiv("(x+1)^{300}(x-1)^{300}", "(x^2-1)^{300}", timeout=1.0, pool=pool) is False
        assert time.monotonic() - start < 5.0
        assert pool.stats["timeouts"] == 1
        assert pool.equal(["sym", "y"], ["sym", "y"], ["exact"], timeout=60.0) is True  # after the restart
        assert pool.stats["restarts"] == 2
    finally:
        pool.close()


def test_a_worker_that_dies_mid_call_counts_as_not_equal_and_is_restarted(monkeypatch):
    # The worker dies between the liveness check and the request (killed by the OOM killer, say): the pipe
    # breaks. The pair is judged not equal, the trainer never sees the OSError, the next check works.
    import os
    import signal

    pool = MathPool(size=1)
    try:
        assert pool.equal(["sym", "x"], ["sym", "x"], ["exact"], timeout=60.0) is True  # the worker is up
        worker = pool._workers[0]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        monkeypatch.setattr(type(worker), "alive", lambda self: True)
        assert pool.equal(["sym", "x"], ["sym", "x"], ["exact"], timeout=5.0) is None
        monkeypatch.undo()
        assert pool.equal(["sym", "y"], ["sym", "y"], ["exact"], timeout=60.0) is True
        assert pool.stats["restarts"] == 2
    finally:
        pool.close()
