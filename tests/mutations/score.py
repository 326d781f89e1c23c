"""Deliberate one-line bugs in SCoRe's objective (rl/score.py) and module (lightning_modules/score.py); each
must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area score"""

F = "tests/test_score.py"
PURE = [f"{F}::test_stage_two_returns_bonus_and_rloo_advantages_by_hand", f"{F}::test_bonus_sign_follows_the_flip",
        f"{F}::test_stage_one_returns_only_on_attempt_two_and_beta2_only_on_attempt_one",
        f"{F}::test_baselines_stay_within_each_problem_group", f"{F}::test_kl_penalty_in_reward_sums_each_attempt_separately"]
GRAD = [f"{F}::test_update_gradient_is_the_paper_objective"]

MUTATIONS = [
    {"name": "stage1_reward_on_attempt_1", "file": "rl/score.py",
     "old": "return torch.stack([torch.zeros_like(r1), r2], dim=1)",
     "new": "return torch.stack([r2, torch.zeros_like(r1)], dim=1)", "tests": PURE},
    {"name": "stage1_rewards_attempt_1_with_r1", "file": "rl/score.py",
     "old": "return torch.stack([torch.zeros_like(r1), r2], dim=1)", "new": "return torch.stack([r1, r2], dim=1)",
     "tests": PURE},
    {"name": "stage2_returns_on_swapped_turns", "file": "rl/score.py",
     "old": "return torch.stack([r1, r2 + alpha * (r2 - r1)], dim=1)",
     "new": "return torch.stack([r2 + alpha * (r2 - r1), r1], dim=1)", "tests": PURE},
    {"name": "alpha_sign_flipped", "file": "rl/score.py",
     "old": "r2 + alpha * (r2 - r1)], dim=1)", "new": "r2 + alpha * (r1 - r2)], dim=1)", "tests": PURE},
    {"name": "beta2_on_attempt_2", "file": "rl/score.py",
     "old": "        return [beta2, beta1]", "new": "        return [beta1, beta2]", "tests": PURE},
    {"name": "single_scalar_times_both_attempts", "file": "rl/score.py",
     "old": "v.gather(1, turn_ids.clamp(min=0))", "new": "v.sum(1, keepdim=True).expand_as(turn_ids)", "tests": PURE},
    {"name": "no_baseline", "file": "rl/score.py",
     "old": "cols.append(rloo_advantages(returns[:, t], group_size))", "new": "cols.append(returns[:, t].float())",
     "tests": PURE},
    {"name": "baseline_over_the_whole_batch", "file": "rl/score.py",
     "old": "cols.append(rloo_advantages(returns[:, t], group_size))",
     "new": "cols.append(rloo_advantages(returns[:, t], returns.shape[0]))", "tests": PURE},
    {"name": "instruction_tokens_get_advantage", "file": "rl/score.py",
     "old": "    mask = loss_mask.bool() & (turn_ids >= 0)\n    if bool(",
     "new": "    mask = torch.ones_like(loss_mask, dtype=torch.bool)\n    if bool(", "tests": PURE},
    {"name": "kl_penalty_summed_over_both_attempts", "file": "rl/score.py",
     "old": "(token_values_ * (mask & (turn_ids == t))).sum(dim=1)", "new": "(token_values_ * mask).sum(dim=1)",
     "tests": PURE},
    {"name": "module_ignores_the_stage", "file": "lightning_modules/score.py",
     "old": "returns = turn_returns(r1, r2, hp.stage, hp.alpha)", "new": "returns = turn_returns(r1, r2, \"II\", hp.alpha)",
     "tests": [f"{F}::test_fit_logs_per_attempt_metrics_then_stage_two_starts_from_stage_one"]},
    {"name": "module_reference_copied_after_init_from", "file": "lightning_modules/score.py",
     "old": "        self.reference = ReferencePolicy.for_policy(self.policy, self.loss_config.uses_kl)\n        if hp.init_from:\n            load_policy_weights(self.policy, hp.init_from)",
     "new": "        if hp.init_from:\n            load_policy_weights(self.policy, hp.init_from)\n        self.reference = ReferencePolicy.for_policy(self.policy, self.loss_config.uses_kl)",
     "tests": [f"{F}::test_fit_logs_per_attempt_metrics_then_stage_two_starts_from_stage_one"]},
    {"name": "update_without_reference", "file": "lightning_modules/score.py",
     "old": "stats = self.rl_update(self.policy, r, adv, cfg, self.schedule, ref_logprobs=ref)",
     "new": "stats = self.rl_update(self.policy, r, adv, cfg, self.schedule, ref_logprobs=None)",
     "tests": [f"{F}::test_fit_logs_per_attempt_metrics_then_stage_two_starts_from_stage_one"]},
]
