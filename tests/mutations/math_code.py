"""Mutations of the math grader, the code sandbox and the task loaders (issue 12): each must be caught."""

MG = "rl/math_grading.py"
SB = "rl/sandbox.py"
TM = "tests/test_math_grading.py"
TS = "tests/test_sandbox.py"
HOSTILE = f"{TS}::test_hostile_programs_all_fail_within_limits_and_leave_everything_untouched"

MUTATIONS = [
    {"name": "boxed_no_nested_braces", "file": MG,
     "old": "            if c == \"{\":\n                depth += 1\n            elif c == \"}\":\n                depth -= 1\n"
            "                if depth == 0:\n                    return text[m.end():i].strip()",
     "new": "            if c == \"{\":\n                depth += 0\n            elif c == \"}\":\n                depth -= 1\n"
            "                if depth == 0:\n                    return text[m.end():i].strip()",
     "tests": [f"{TM}::test_extraction"]},
    {"name": "no_thousands_separator_rule", "file": MG,
     "old": '        s = re.sub(r"\\{?,\\}?", "", s)', "new": "        s = s",
     "tests": [f"{TM}::test_math500_cases"]},
    {"name": "fallback_not_switchable", "file": MG,
     "old": "    if fallback_last_number:", "new": "    if True:",
     "tests": [f"{TM}::test_fallback_can_be_switched_off"]},
    {"name": "interval_brackets_ignored", "file": MG,
     "old": "            return (ba[0], ba[2]) == (bb[0], bb[2]) and len(ea) == len(eb) \\",
     "new": "            return len(ea) == len(eb) \\",
     "tests": [f"{TM}::test_math500_cases"]},
    {"name": "mixed_number_as_product", "file": MG,
     "old": "        v = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))",
     "new": "        v = int(m.group(2)) * Fraction(int(m.group(3)), int(m.group(4)))",
     "tests": [f"{TM}::test_math500_cases"]},
    {"name": "degrees_not_removed", "file": MG,
     "old": '    s = s.replace("^{\\\\circ}", "").replace("^\\\\circ", "").replace("\\\\circ", "").replace("°", "")',
     "new": '    s = s.replace("°", "")',
     "tests": [f"{TM}::test_math500_cases"]},
    {"name": "untrusted_object_compares_equal", "file": SB,
     "old": '        raise UntrustedValue("a test compared or inspected an object built by the program (not a plain value)")',
     "new": "        return True",
     "tests": [HOSTILE]},
    {"name": "exit_status_trusted_over_tests", "file": SB,
     "old": "        elif tests and all(tests):", "new": "        elif True:",
     "tests": [f"{TS}::test_good_program_passes_and_wrong_one_fails"]},
    {"name": "skip_killing_leftover_processes", "file": SB,
     "old": "    _kill_leftovers(pid, namespaces)\n", "new": "    pass\n",
     "tests": [f"{TS}::test_timeout_kills_the_whole_process_group_tree"]},
    {"name": "program_runs_as_root", "file": SB,
     "old": "    if uid is not None:\n        os.setgroups([])", "new": "    if False:\n        os.setgroups([])",
     "tests": [HOSTILE]},
    {"name": "no_network_namespace", "file": SB,
     "old": "    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:",
     "new": "    if libc.unshare(CLONE_NEWNS | CLONE_NEWPID) != 0:",
     "tests": [HOSTILE]},
    {"name": "program_may_rebind_builtins", "file": SB,
     "old": "    return sorted(n for n in loads - stores if not hasattr(builtins, n) or n in shadow)",
     "new": "    return sorted(n for n in loads - stores)",
     "tests": [f"{TS}::test_program_cannot_rebind_builtins_used_by_the_tests"]},
    {"name": "gsm8k_answer_keeps_commas", "file": "rl/tasks.py",
     "old": '    return solution.split("####")[-1].strip().replace(",", "")',
     "new": '    return solution.split("####")[-1].strip()',
     "tests": ["tests/test_tasks.py::test_real_files_load_with_uniform_keys"]},
    {"name": "math_answer_not_from_last_boxed", "file": "rl/tasks.py",
     "old": "            answer = last_boxed(solution)", "new": "            answer = solution",
     "tests": ["tests/test_tasks.py::test_math_answer_derived_from_last_boxed"]},
]
