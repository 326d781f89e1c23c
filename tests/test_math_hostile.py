"""The math reward against a policy that games it (issues 20 and 21): answers that are Python, answers that
crash or stall the grader, grading errors in both directions, and the documented rule (docs/math_grading.md),
each example of which is a test here."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

import tasks.math_grading as mg
from tasks.math_grading import GRADING_ERRORS, GRADING_TIMEOUTS, is_equiv, last_boxed, math_reward
from tasks.math_parse import parse
from tasks.math_pool import MathPool
from tasks.math_value import to_json

ROOT = Path(__file__).resolve().parent.parent


def _doc_examples() -> list[tuple[str, str, bool]]:
    text = (ROOT / "docs/math_grading.md").read_text()
    table = text.split("<!-- examples -->")[1].split("<!-- /examples -->")[0]
    rows = re.findall(r"^\| `(.*?)` \| `(.*?)` \| (yes|no) \|", table, re.MULTILINE)
    return [(a, b, eq == "yes") for a, b, eq in rows]


def _warm(p: MathPool) -> None:
    """Start every worker now (FIFO: one call each), so a timed check does not include starts."""
    for _ in range(p.size):
        assert p.equal(["sym", "w"], ["sym", "w"], ["exact"], timeout=60.0) is True


@pytest.fixture(scope="module")
def pool():
    p = MathPool(size=3)
    _warm(p)
    yield p
    p.close()


@pytest.mark.parametrize("pred,gold,equal", _doc_examples())
def test_documented_examples(pred, gold, equal):
    assert is_equiv(pred, gold) is equal


def test_the_documented_examples_cover_the_issues_grading_errors():
    # issue 20 (accepted though wrong; rejected though right) and issue 21 item 5, each both ways
    required = [("0", "\\frac{1}{2^{40}}", False), ("2^{100}+1", "2^{100}", False),
                ("1000000000001", "10^{12}", False), ("\u22125", "-5", True), ("\u22125", "5", False),
                ("10\u2009000", "10000", True), ("10\u2009000", "1000", False), ("1e3", "1000", True),
                ("1e3", "13", False), ("\u221e", "\\infty", True), ("\u221e", "-\\infty", False),
                ("\\{1,2\\}", "1, 2", True), ("\\{1,3\\}", "1, 2", False), ("\\cos(\\pi)", "-1", True),
                ("\\sin(\\frac{\\pi}{6})", "\\frac12", True), ("1.4142135623", "\\sqrt{2}", False),
                ("0.3333333333", "1/3", False), ("1.41", "\\sqrt{2}", False), ("\\sqrt{2}", "1.41", True)]
    examples = _doc_examples()
    assert len(examples) >= 40
    assert [r for r in required if r not in examples] == []
    assert [r for r in required if is_equiv(r[0], r[1]) is not r[2]] == []


def test_exact_rules_where_the_old_tolerance_accepted_wrong_answers():
    assert not is_equiv("0", "\\frac{1}{2^{40}}") and is_equiv("\\frac{1}{2^{40}}", "2^{-40}")
    assert not is_equiv("2^{100}+1", "2^{100}") and is_equiv("2^{100}", "1267650600228229401496703205376")
    assert not is_equiv("1000000000001", "10^{12}") and is_equiv("1000000000000", "10^{12}")


# written without spaces (MATH's normalisation deletes them), so each one runs if the grader evaluates text
PAYLOADS = [
    "__import__('builtins').open({path!r},'w').write('pwned')",
    "__import__('os').mknod({path!r})",
    "(lambda:__import__('pathlib').Path({path!r}).touch())()",
    "[open({path!r},'w')for(_)in'a']",
    "exec(\"open({path!r},'w')\")",
    "().__class__.__base__.__subclasses__()",
    # the lying object the old grader built through sympify: x - gold is 0 for every gold (a universal pass)
    "__import__('builtins').type('Z',(),{{'__sub__':[].count,'__rsub__':[].count}})()",
    "type('Z',(),{{'__sub__':lambda*a:0,'__rsub__':lambda*a:0,'__eq__':lambda*a:True}})()",
    "Symbol('x').__class__",
]


def test_boxed_python_is_never_executed_and_scores_0(tmp_path, pool):
    # each payload would create its own file if anything evaluated it
    responses = [f"The answer is $\\boxed{{{p.format(path=str(tmp_path / f'pwned{k}'))}}}$."
                 for k, p in enumerate(PAYLOADS)]
    for gold in ("5", "0", "\\frac{1}{2}", "\\sqrt{2}", "x+1"):
        assert math_reward(responses, [{"answer": gold}] * len(responses), pool=pool) == [0.0] * len(PAYLOADS)
    assert sorted(tmp_path.iterdir()) == []


def _shipped_golds() -> list[str]:
    gsm = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
           for line in open(ROOT / "data/gsm8k/test.jsonl")]
    return gsm + [json.loads(line)["answer"] for line in open(ROOT / "data/math500/test.jsonl")]


# the lying object first: the old grader gave it reward 1 on 457/500 MATH-500 and 1319/1319 GSM8K problems
LOGIC_FREE = sorted((p.format(path="/nonexistent/x") for p in PAYLOADS), key=lambda p: "__sub__" not in p) + [
    "\\frac\\1", "9^{9^9}", "0/0", "\\frac{0}{0}", "\\infty-\\infty", "0\\cdot\\infty", "nan", "zoo", "oo",
    "\\text{}", "{}", "()", "\\boxed{}", "=", "x=x", "0=0", "\\pm", "\\emptyset", "\\mathbb{R}", "1" * 5000]


def test_logic_free_answers_score_0_on_every_shipped_problem(pool):
    golds = _shipped_golds()
    assert len(golds) == 1319 + 500
    golds = sorted(set(golds))  # the same gold string grades the same: once is enough
    examples = [{"answer": g} for g in golds]
    for answer in LOGIC_FREE:
        rewards = math_reward([f"So $\\boxed{{{answer}}}$."] * len(golds), examples, pool=pool)
        assert sum(rewards) == 0, (answer, [g for g, r in zip(golds, rewards) if r])


def test_crash_and_size_items_score_0_and_never_reach_the_worker(pool):
    responses = ["\\boxed{\\frac\\1}", "\\boxed{" + "9" * 5000 + "}", "so 1/3 = 0." + "3" * 5000,
                 "\\boxed{9^{9^9}}", "\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "\\boxed{(x+1)^{10^{6}}}",
                 "\\boxed{" + "(" * 500 + "1" + ")" * 500 + "}", "\\boxed{" + "-" * 6000 + "1}",
                 "\\boxed{10^{10^{10}}}", "\\boxed{(1000!)^{2}}", "\\boxed{1e99999}", "\\boxed{\\sqrt[10^{9}]{2}}",
                 "\\boxed{2^{12000}\\cdot2^{12000}\\cdot2^{12000}\\cdot x}", "\\boxed{" + "2x" * 499 + "}",
                 "\\boxed{1\\pm2\\pm3}", "\\boxed{\\{1\\pm2\\pm3, 4\\}}",
                 "\\boxed{" + "1+" * 499 + "1}", "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}"]
    checks, errors = pool.stats["checks"], sum(GRADING_ERRORS.values())
    assert math_reward(responses, [{"answer": "1"}] * len(responses), pool=pool) == [0.0] * len(responses)
    assert pool.stats["checks"] == checks
    assert sum(GRADING_ERRORS.values()) == errors  # refused by a guard, not rescued from an exception
    # deep but within the guards: reaches the worker, which may fail on it; still 0 and no exception
    deep = ["\\boxed{" + "x-" * 499 + "x}", "\\boxed{" + "\\sin(" * 40 + "x" + ")" * 40 + "}"]
    assert math_reward(deep, [{"answer": "1"}] * len(deep), pool=pool) == [0.0] * len(deep)


def test_last_boxed_is_linear():
    # 4,000 unclosed boxes against 4,000 closed ones (text of about the same length), measured in the same run:
    # one pass costs about the same for both; the old rescan from every start was quadratic (7.9 s vs ms).
    def best_of(text, expected):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert last_boxed(text) == expected
            times.append(time.perf_counter() - start)
        return min(times)

    unclosed, closed = best_of("\\boxed{" * 4000, None), best_of("\\boxed{1}" * 4000, "1")
    assert unclosed < 10 * closed + 0.005, (unclosed, closed)
    assert last_boxed("\\boxed{" * 4000 + "\\boxed{7}") == "7"


SLOW = [("(x+{k})^{{300}}(x-{k})^{{300}}", "(x^2-{k2})^{{300}}")]  # a true identity whose proof takes long


def to_tree(s: str) -> list:
    return to_json(parse(s))


def _slow(k: int) -> tuple[str, str]:
    a, b = SLOW[0]
    return a.format(k=k), b.format(k2=k * k)


def test_three_slow_items_in_one_response_share_one_deadline(pool):
    items = [_slow(k) for k in (1, 2, 3)]
    response = "\\boxed{\\{" + ", ".join(a for a, _ in items) + "\\}}"
    gold = "\\{" + ", ".join(b for _, b in items) + "\\}"
    _warm(pool)
    counted = GRADING_TIMEOUTS["sample_deadline"]
    start = time.monotonic()
    assert math_reward([response], [{"answer": gold}], timeout=2.0, pool=pool) == [0.0]
    assert time.monotonic() - start < 4.0  # one deadline of 2 s; items one after another: 6 s or more
    assert GRADING_TIMEOUTS["sample_deadline"] == counted + 1  # decided by the clock, and counted as such


def test_slow_samples_of_a_batch_are_graded_in_parallel(pool):
    items = [_slow(k) for k in (4, 5, 6)]
    _warm(pool)
    start = time.monotonic()
    rewards = math_reward([f"\\boxed{{{a}}}" for a, _ in items] + ["\\boxed{2}"],
                          [{"answer": b} for _, b in items] + [{"answer": "2"}], timeout=2.0, pool=pool)
    assert rewards == [0.0, 0.0, 0.0, 1.0]
    assert time.monotonic() - start < 4.0  # 3 workers at once: 2 s; behind one lock: 6 s


def test_a_batch_is_bounded_by_its_budget_whatever_it_holds(pool):
    # Nine samples that each need their whole deadline, on three workers: without a batch budget 3 rounds x 2 s
    # (plus restarts); with budget_s = 2.5 the whole call takes about 2.5 s, the exact samples still get
    # their reward, and the samples the budget decided are counted.
    items = [_slow(k) for k in range(10, 19)]
    _warm(pool)
    counted = GRADING_TIMEOUTS["batch_budget"]
    start = time.monotonic()
    rewards = math_reward([f"\\boxed{{{a}}}" for a, _ in items] + ["\\boxed{2}", "#### 7"],
                          [{"answer": b} for _, b in items] + [{"answer": "2"}, {"answer": "7"}],
                          timeout=2.0, pool=pool, budget_s=2.5)
    assert time.monotonic() - start < 4.0
    assert rewards == [0.0] * 9 + [1.0, 1.0]
    assert GRADING_TIMEOUTS["batch_budget"] >= counted + 3


def _children() -> set[int]:
    me, out = os.getpid(), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(d.name))
    return out


def test_symbolic_worker_is_limited_and_isolated(monkeypatch):
    # Black box: whatever process the grader starts for a symbolic check (here the default pool's first worker)
    # has a memory limit, may not write files, runs as an unprivileged uid in its own network namespace (as
    # root), and has none of the trainer's environment.
    import tasks.math_pool as mp

    monkeypatch.setattr(mp, "_POOL", None)  # a fresh default pool, so its worker starts during this test
    monkeypatch.setattr(mg, "_CACHE", {}, raising=False)
    before = _children()
    monkeypatch.setenv("RAGKIT_SECRET_FOR_TEST", "s3cret")
    try:
        assert math_reward(["\\boxed{\\sqrt{8}+\\sqrt{18}}"], [{"answer": "5\\sqrt{2}"}]) == [1.0]
        started = _children() - before
        assert started
        for pid in started:
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert re.search(r"Max address space\s+1073741824\s+1073741824", limits), limits
            assert re.search(r"Max file size\s+0\s+0", limits), limits
            status = Path(f"/proc/{pid}/status").read_text()
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
            if os.geteuid() == 0:
                assert 63000 <= uid < 63100, uid
                assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert {e.split(b"=")[0] for e in env if e} <= {b"PATH", b"LANG"}, env
            else:
                assert uid == os.geteuid()
    finally:
        if isinstance(mp._POOL, MathPool):
            mp._POOL.close()


def test_an_exception_while_grading_a_sample_is_reward_0_counted_and_alone(monkeypatch, pool):
    real = mg.extract_answer_math

    def boom(text, **kw):
        if "BOOM" in text:
            raise RecursionError("a hostile response")
        return real(text, **kw)

    monkeypatch.setattr(mg, "extract_answer_math", boom)
    before = dict(GRADING_ERRORS)
    rewards = math_reward(["\\boxed{5}", "BOOM", None, "#### 5"], [{"answer": "5"}] * 4, pool=pool)
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert GRADING_ERRORS["RecursionError"] == before.get("RecursionError", 0) + 1
    assert sum(GRADING_ERRORS.values()) == sum(before.values()) + 2


def test_a_check_waiting_for_a_busy_pool_keeps_its_deadline():
    # More callers than workers (evaluation grading next to the trainer, say): waiting for a free worker is
    # part of a check's time, so a short check does not wait out someone else's slow one.
    import threading

    small = MathPool(size=1)
    try:
        _warm(small)
        slow_a, slow_b = (to_tree(s) for s in _slow(7))
        busy = threading.Thread(target=small.equal, args=(slow_a, slow_b, ["exact"], 4.0))
        busy.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert small.equal(["sym", "q"], ["sym", "q"], ["exact"], timeout=0.5) is None
        assert time.monotonic() - start < 2.0  # waiting for the busy worker: 3.5 s more
        busy.join()
    finally:
        small.close()


def test_closing_the_pool_while_a_worker_restarts_leaves_nothing(monkeypatch):
    # A check times out, its worker starts again in the background, and the pool is closed during that start:
    # no thread fails (the starting worker's pipes are not closed under it) and no worker is left running.
    import threading

    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    small = MathPool(size=1)
    _warm(small)
    slow_a, slow_b = (to_tree(s) for s in _slow(30))
    assert small.equal(slow_a, slow_b, ["exact"], timeout=1.0) is None  # killed; the restart has begun
    time.sleep(0.2)
    small.close()
    deadline = time.monotonic() + 60
    while small._free.qsize() < small.size and time.monotonic() < deadline:  # the restart thread gives it back
        time.sleep(0.1)
    assert errors == []
    assert small._free.qsize() == small.size and not any(w.alive() for w in small._workers)
    assert small.equal(["sym", "q"], ["sym", "q"], ["exact"], timeout=5.0) is None  # closed: no new worker
