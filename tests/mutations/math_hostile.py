"""Mutations of the math grader's rule, guards and isolation (issues 20 and 21): each must be caught."""

MG = "tasks/math_grading.py"
MW = "tasks/math_worker.py"
MV = "tasks/math_value.py"
TH = "tests/test_math_hostile.py"
DOCS = f"{TH}::test_documented_examples"
ISOLATION = f"{TH}::test_symbolic_worker_is_limited_and_isolated"
NEVER_WORKER = f"{TH}::test_crash_and_size_items_score_0_and_never_reach_the_worker"

MUTATIONS = [
    {"name": "loose_sympy_tolerance", "file": MW,  # issue 21: "1.41" must not equal sqrt 2
     "old": "        if v is not None and v > 1e-20 * max(1.0, scale):\n            return False",
     "new": "        if v is not None and v <= 1e-2 * max(1.0, scale):\n            return True",
     "tests": [DOCS]},
    {"name": "relative_tolerance_for_rationals", "file": MG,  # issue 20: 0 accepted for 1/2^40
     "old": "        return va == vb  # exact: Fractions, or the same infinity",
     "new": "        return va == vb or (isinstance(va, Fraction) and isinstance(vb, Fraction)"
            " and abs(va - vb) <= Fraction(1, 10 ** 9) * max(1, abs(vb)))",
     "tests": [DOCS]},
    {"name": "decimal_gold_tolerance_doubled", "file": MG,
     "old": "            return abs(va - vb) <= Fraction(1, 2 * 10 ** k)",
     "new": "            return abs(va - vb) <= Fraction(1, 10 ** k)",
     "tests": [DOCS]},
    {"name": "worker_decimal_gold_tolerance_doubled", "file": MW,
     "old": "abs(re - g) <= sp.Rational(1, 2 * 10 ** k))", "new": "abs(re - g) <= sp.Rational(1, 10 ** k))",
     "tests": [DOCS]},
    {"name": "tolerance_keyed_on_the_answers_form", "file": MG,
     "old": "    places = _DECIMAL.fullmatch(b)", "new": "    places = _DECIMAL.fullmatch(a)",
     "tests": [DOCS]},
    {"name": "pi_is_a_plain_symbol", "file": MW,  # issue 21: cos(pi) graded wrong
     "old": '        return {"pi": sp.pi,', "new": '        return {"pi": sp.Symbol("pi"),',
     "tests": [DOCS]},
    {"name": "no_scientific_notation", "file": "tasks/math_parse.py",
     "old": '_NUM = re.compile(r"(\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE]([+-]?\\d+))?")',
     "new": '_NUM = re.compile(r"(\\d+(?:\\.\\d*)?|\\.\\d+)()")',
     "tests": [DOCS]},
    {"name": "thin_space_not_a_separator", "file": "tasks/math_extract.py",
     "old": '    s = re.sub(r"\\s+", "", s)  # every Unicode space',
     "new": '    s = s.replace(" ", "")  # every Unicode space',
     "tests": [DOCS]},
    {"name": "unicode_minus_not_a_minus", "file": "tasks/math_extract.py",
     "old": '.replace("\\u2212", "-")', "new": "",
     "tests": [DOCS]},
    {"name": "set_not_equal_to_a_list", "file": MG,
     "old": '    if ba is not None and ba[0] == "\\\\{" and (bb is None or bb[0] == "\\\\{"):',
     "new": '    if ba is not None and ba[0] == "\\\\{" and (bb is not None and bb[0] == "\\\\{"):',
     "tests": [DOCS]},
    {"name": "unparsable_text_falls_back_to_sympify", "file": MG,  # issue 20: the grader executed the answer
     "old": "    (ta, va), (tb, vb) = _parsed(a), _parsed(b)\n    if ta is None or tb is None:\n        return False",
     "new": "    (ta, va), (tb, vb) = _parsed(a), _parsed(b)\n    if ta is None or tb is None:\n"
            "        return __import__('sympy').sympify(a) == __import__('sympy').sympify(b)",
     "tests": [f"{TH}::test_boxed_python_is_never_executed_and_scores_0"]},
    {"name": "intermediate_size_unchecked", "file": MV,
     "old": "    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:",
     "new": "    if False:",
     "tests": [NEVER_WORKER]},
    {"name": "huge_exponent_of_a_symbolic_base", "file": MV,
     "old": "        if b is not None and (abs(b.numerator) > MAX_SYMBOLIC_EXP or b.denominator > MAX_SYMBOLIC_EXP):",
     "new": "        if False:",
     "tests": [NEVER_WORKER]},
    {"name": "worker_keeps_root", "file": MW,
     "old": "        os.setresuid(uid, uid, uid)\n", "new": "        pass\n",
     "tests": [ISOLATION]},
    {"name": "worker_shares_the_network", "file": MW,
     "old": "libc.unshare(0x40000000) == 0", "new": "libc.unshare(0) == 0",
     "tests": [ISOLATION]},
    {"name": "worker_without_memory_limit", "file": MW,
     "old": '    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb,) * 2)\n', "new": "",
     "tests": [ISOLATION]},
    {"name": "exception_reaches_the_trainer", "file": MG,
     "old": "    except Exception as e:  # noqa: BLE001 - a sample must never raise into the trainer",
     "new": "    except ValueError as e:  # noqa: BLE001 - a sample must never raise into the trainer",
     "tests": [f"{TH}::test_an_exception_while_grading_a_sample_is_reward_0_counted_and_alone"]},
    {"name": "batch_graded_one_at_a_time", "file": MG,
     "old": "    with ThreadPoolExecutor(max_workers=pool.size) as ex_:",
     "new": "    with ThreadPoolExecutor(max_workers=1) as ex_:",
     "tests": [f"{TH}::test_slow_samples_of_a_batch_are_graded_in_parallel"]},
    {"name": "wait_for_a_free_worker_unbounded", "file": "tasks/math_pool.py",
     "old": "            w = self._free.get(timeout=max(timeout, 0.001))", "new": "            w = self._free.get()",
     "tests": [f"{TH}::test_a_check_waiting_for_a_busy_pool_keeps_its_deadline"]},
    {"name": "batch_budget_ignored", "file": MG,  # red team M1: a batch's time grew with its slow samples
     "old": "    batch_deadline = None if budget_s is None else time.monotonic() + budget_s",
     "new": "    batch_deadline = None",
     "tests": [f"{TH}::test_a_batch_is_bounded_by_its_budget_whatever_it_holds"]},
    {"name": "timeouts_not_counted", "file": MG,  # red team M2: rewards decided by the clock must be visible
     "old": "            GRADING_TIMEOUTS[ctx.reason] += 1", "new": "            pass",
     "tests": [f"{TH}::test_three_slow_items_in_one_response_share_one_deadline"]},
    {"name": "restart_in_the_foreground", "file": "tasks/math_pool.py",
     "old": "            if killed:\n", "new": "            if False:\n",
     "tests": [f"{TH}::test_a_batch_is_bounded_by_its_budget_whatever_it_holds"]},
    {"name": "value_on_the_right_not_read", "file": "tasks/math_extract.py",  # red team M3
     "old": '    s = re.sub(r"\\s*=\\s*[a-zA-Z](?:_\\d)?\\s*$", "", s)  # 5 = x', "new": "",
     "tests": [DOCS]},
    {"name": "close_kills_workers_in_use", "file": "tasks/math_pool.py",
     "old": "        for w in idle:\n            self._release(w)", "new": "        for w in self._workers:\n            w.kill()",
     "tests": [f"{TH}::test_closing_the_pool_while_a_worker_restarts_leaves_nothing"]},
    {"name": "fresh_timeout_per_item", "file": MG,
     "old": "    result = ctx.pool.equal(to_json(ta), to_json(tb), mode, left)",
     "new": "    result = ctx.pool.equal(to_json(ta), to_json(tb), mode, 5.0)",
     "tests": [f"{TH}::test_three_slow_items_in_one_response_share_one_deadline"]},
]
