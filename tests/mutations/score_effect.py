"""Deliberate one-line bugs in the logged share of prompt groups with a nonzero advantage (rl/advantages.py,
rl/policy_module.py, lightning_modules/score.py); each must make the named tests fail.
Run: .venv/bin/python tests/mutation_check.py --area score_effect"""

F = "tests/test_score_advantage_share.py"
STEP = [f"{F}::test_score_step_logs_the_share_of_groups_with_a_task_signal"]
ALL = [*STEP, f"{F}::test_nonzero_group_share_by_hand"]

MUTATIONS = [
    {"name": "share_of_rewards_not_advantages", "file": "lightning_modules/score.py",
     "old": "self.log_advantage_share(turn_advantages(task_returns, G, obj.baseline), G)",
     "new": "self.log_advantage_share(task_returns, G)", "tests": STEP},
    {"name": "share_of_advantages_with_the_kl_penalty", "file": "lightning_modules/score.py",
     "old": "self.log_advantage_share(turn_advantages(task_returns, G, obj.baseline), G)",
     "new": "self.log_advantage_share(turn_advantages(returns, G, obj.baseline), G)", "tests": STEP},
    {"name": "groups_as_strided_rows", "file": "rl/advantages.py",
     "old": "(a.abs() > atol).view(-1, group_size, a.shape[1]).any(dim=1)",
     "new": "(a.abs() > atol).view(group_size, -1, a.shape[1]).any(dim=0)", "tests": ALL},
    {"name": "share_of_rows_not_groups", "file": "rl/advantages.py",
     "old": "(a.abs() > atol).view(-1, group_size, a.shape[1]).any(dim=1)",
     "new": "(a.abs() > atol).view(-1, group_size, a.shape[1]).flatten(0, 1)", "tests": ALL},
    {"name": "overall_share_is_the_last_turns", "file": "rl/policy_module.py",
     "old": "nonzero_group_share(a.abs().amax(dim=1), group_size)",
     "new": "nonzero_group_share(a[:, -1], group_size)", "tests": STEP},
]

TESTBED = ["tests/test_score_testbed.py"]
MUTATIONS += [
    {"name": "train_split_not_excluded", "file": "tasks/arithmetic.py",
     "old": "if o.disjoint and source != \"test\":", "new": "if o.disjoint and source == \"shots\":", "tests": TESTBED},
    {"name": "excluded_in_one_order_only", "file": "tasks/arithmetic.py",
     "old": "        if frozenset((a, b)) in exclude:\n", "new": "        if frozenset((a, b)) in exclude and a <= b:\n",
     "tests": TESTBED},
    {"name": "one_digit_operands_dropped", "file": "tasks/arithmetic.py",
     "old": "    return 10 ** (min_digits - 1), 10 ** digits - 1", "new": "    return 10 ** (digits - 1), 10 ** digits - 1",
     "tests": TESTBED},
    {"name": "two_attempt_shot_without_its_second_answer", "file": "tasks/problem_format.py",
     "old": "out += [{\"role\": \"user\", \"content\": self.instruction}, {\"role\": \"assistant\", \"content\": answer}]",
     "new": "out += [{\"role\": \"user\", \"content\": self.instruction}]", "tests": TESTBED},
    {"name": "datamodule_drops_shot_attempts", "file": "datamodules/self_correction.py",
     "old": "return ProblemFormat(hp.prompt, tuple(self.shots), hp.chat, shot_attempts=hp.shot_attempts)",
     "new": "return ProblemFormat(hp.prompt, tuple(self.shots), hp.chat)", "tests": TESTBED},
    {"name": "shots_show_the_tasks_instruction_not_the_modules", "file": "rl/self_correction.py",
     "old": "return fmt.with_instruction(score_instruction(task, instruction))",
     "new": "return fmt.with_instruction(score_instruction(task))", "tests": TESTBED},
    {"name": "module_instruction_not_passed_to_the_format", "file": "lightning_modules/score.py",
     "old": "self.task, self.instruction,\n", "new": "self.task, None,\n", "tests": TESTBED},
]

TABLE = ["tests/test_score_effect_table.py"]
MUTATIONS += [
    {"name": "standard_deviation_not_error", "file": "bench/score_effect_table.py",
     "old": "math.sqrt(sum((x - m) ** 2 for x in xs) / n / n)", "new": "math.sqrt(sum((x - m) ** 2 for x in xs) / n)",
     "tests": TABLE},
    {"name": "unpaired_difference_se", "file": "bench/score_effect_table.py",
     "old": "diffs = {c: [a - b for a, b in zip(mine[c], theirs[c])] for c in COLUMNS}",
     "new": "diffs = {c: [a - sum(theirs[c]) / len(theirs[c]) for a in mine[c]] for c in COLUMNS}", "tests": TABLE},
    {"name": "resumed_run_earlier_file_wins", "file": "bench/score_effect_table.py",
     "old": 'key=lambda p: p.stat().st_mtime):', "new": 'key=lambda p: -p.stat().st_mtime):', "tests": TABLE},
    {"name": "diagnostics_first_step_dropped", "file": "bench/score_effect_table.py",
     "old": "steps = [found[name][k] for k in sorted(found[name])]",
     "new": "steps = [found[name][k] for k in sorted(found[name])][1:]", "tests": TABLE},
    {"name": "ablation_rows_against_the_base", "file": "bench/score_effect_table.py",
     "old": 'lines += paired(recs, "stage1_2", [a for a in ABLATIONS', "new": 'lines += paired(recs, "base", [a for a in ABLATIONS',
     "tests": TABLE},
]
