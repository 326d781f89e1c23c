"""Mutations of the self-correction metrics, environments, prompts, evaluation and problems (issue 12): each
must be caught."""

SC = "rl/self_correction.py"
PR = "tasks/prompts.py"
DM = "datamodules/self_correction.py"
T = "tests/test_self_correction.py"

MUTATIONS = [
    {"name": "i_to_c_counts_c_to_i", "file": SC,
     "old": "    i2c = sum(1 for x, y in zip(r1, r2) if float(x) == 0.0 and float(y) == 1.0) / n",
     "new": "    i2c = sum(1 for x, y in zip(r1, r2) if float(x) == 1.0 and float(y) == 0.0) / n",
     "tests": [f"{T}::test_attempt_metrics_by_hand"]},
    {"name": "c_to_i_over_wrong_only", "file": SC,
     "old": "    c2i = sum(1 for x, y in zip(r1, r2) if float(x) == 1.0 and float(y) == 0.0) / n",
     "new": "    c2i = sum(1 for x, y in zip(r1, r2) if float(x) == 1.0 and float(y) == 0.0) / max(1, sum(map(float, r1)))",
     "tests": [f"{T}::test_attempt_metrics_by_hand"]},
    {"name": "delta_reversed", "file": SC,
     "old": '"delta(t1,t2)": a2 - a1,', "new": '"delta(t1,t2)": a1 - a2,',
     "tests": [f"{T}::test_attempt_metrics_by_hand"]},
    {"name": "non_binary_accepted", "file": SC,
     "old": "        if bad:\n            raise ValueError", "new": "        if False:\n            raise ValueError",
     "tests": [f"{T}::test_attempt_metrics_refuse_bad_input"]},
    {"name": "second_reward_on_first_attempt", "file": SC,
     "old": "        r1, r2 = reward(first, batch), reward(second, batch)",
     "new": "        r1, r2 = reward(first, batch), reward(first, batch)",
     "tests": [f"{T}::test_evaluate_two_attempts_rewards_and_metrics"]},
    {"name": "self_refine_grades_the_critique", "file": SC,
     "old": "    return InstructionSequenceEnv(steps, attempt_turns=(0, 2))",
     "new": "    return InstructionSequenceEnv(steps, attempt_turns=(0, 1))",
     "tests": [f"{T}::test_self_refine_grades_the_revision_not_the_critique"]},
    {"name": "self_refine_doubles_end_of_turn", "file": SC,
     "old": "self.steps[t.turn].text_after(t.eos)", "new": "self.steps[t.turn].text_after(False)",
     "tests": [f"{T}::test_self_refine_turns_close_once_and_mask_both_instructions"]},
    {"name": "instruction_not_verbatim", "file": PR,
     "old": '"Please correct the error, if any, and rewrite the solution. Only output the final solution! "',
     "new": '"Please correct the error, if any, and rewrite the solution. "',
     "tests": [f"{T}::test_instructions_are_the_papers"]},
    {"name": "calculator_annotations_kept", "file": PR,
     "old": '        solution = _CALCULATOR.sub("", example["solution"])', "new": '        solution = (example["solution"])',
     "tests": [f"{T}::test_render_problem_prompts"]},
    {"name": "short_slice_off_by_one", "file": DM,
     "old": "    return solution_steps(example) <= max_steps", "new": "    return solution_steps(example) <= max_steps + 1",
     "tests": [f"{T}::test_datamodule_gsm8k_short_slice_and_shots"]},
    {"name": "shots_left_in_train", "file": DM,
     "old": 'if r["id"] not in shot_ids]\n            random', "new": 'if r["id"] or shot_ids]\n            random',
     "tests": [f"{T}::test_datamodule_gsm8k_short_slice_and_shots"]},
]
