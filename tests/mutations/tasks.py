"""Mutations of the task registry, the one strict JSONL reader and the self-correction DataModule's use of the
registry (issue 23): each must be caught."""

R = "tasks/registry.py"
REC = "training/records.py"
DM = "datamodules/self_correction.py"
REG = "tests/test_task_registry.py"

MUTATIONS = [
    {"name": "task_reward_by_kind_only", "file": R,
     "old": "    return task.reward if task is not None else KIND_REWARDS[kind]",
     "new": "    return KIND_REWARDS[kind]",
     "tests": [f"{REG}::test_toy_task_reward_and_instruction_reach_the_evaluation"]},
    {"name": "task_instruction_ignored", "file": R,
     "old": "    return task.instruction if task is not None and task.instruction is not None else INSTRUCTIONS[kind]",
     "new": "    return INSTRUCTIONS[kind]",
     "tests": [f"{REG}::test_toy_task_reward_and_instruction_reach_the_evaluation"]},
    {"name": "task_prompt_ignored", "file": "tasks/problem_format.py",
     "old": "        prompt = get_task(task).prompt\n", "new": "        prompt = None\n",
     "tests": [f"{REG}::test_toy_task_from_one_file_runs_through_the_config"]},
    {"name": "repeated_task_name_replaces", "file": R,
     "old": "    if task.name in _TASKS and _TASKS[task.name] != task:", "new": "    if False:",
     "tests": [f"{REG}::test_unknown_names_options_and_repeats_are_clear_errors"]},
    {"name": "mbpp_role_split_ignored", "file": R,
     "old": 'return load_mbpp(source, getattr(options, f"{role}_split"))', "new": 'return load_mbpp(source, "test")',
     "tests": [f"{REG}::test_mbpp_options_choose_the_paper_ranges"]},
    {"name": "shots_file_ignored", "file": DM,
     "old": "source = hp.shots_file if hp.shots_file is not None else task.shots", "new": "source = task.shots",
     "tests": [f"{REG}::test_shots_come_from_shots_file_else_the_tasks_pool"]},
    {"name": "task_options_not_passed", "file": DM,
     "old": "return self.task.load(source, role, self.options)",
     "new": "return self.task.load(source, role, self.task.make_options(None))",
     "tests": ["tests/test_self_correction.py::test_arithmetic_problems_and_their_datamodule"]},
    {"name": "bool_accepted_as_int", "file": REC,
     "old": "if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:",
     "new": "if not isinstance(value, kind):",
     "tests": ["tests/test_tasks.py::test_humaneval_and_mbpp_field_errors"]},
    {"name": "blank_line_skipped_in_beir_files", "file": REC,
     "old": "            if skip_blank:\n                continue", "new": "            if True:\n                continue",
     "tests": ["tests/test_beir.py"]},
    {"name": "task_blank_line_refused", "file": "tasks/loaders.py",
     "old": "    for lineno, row in read_jsonl(path, skip_blank=True):\n        question",
     "new": "    for lineno, row in read_jsonl(path):\n        question",
     "tests": ["tests/test_tasks.py::test_malformed_rows_name_file_line_field"]},
]
