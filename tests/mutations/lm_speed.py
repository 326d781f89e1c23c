"""Deliberate one-line bugs in the LM precision rule and the shared-prefix scoring and generation paths; each
must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area lm_speed"""

F = "tests/test_lm_precision.py::"
RL = [F + "test_old_new_and_reference_logprobs_share_the_precision"]
PATHS = [F + "test_every_lm_path_computes_in_the_models_precision"]
S = ["tests/test_shared_prefix.py::test_prefix_length_leaves_a_prompt_token_in_every_suffix",
     "tests/test_shared_prefix.py::test_shared_prefix_scores_equal_todays_and_one_at_a_time"]
GEN = ["tests/test_shared_prefix.py::test_generation_from_the_prefix_cache_equals_plain_generation"]

MUTATIONS = [
    # -- precision ---------------------------------------------------------------------------------------------
    {"name": "old_and_reference_logprobs_in_fp32", "file": "generation/logprobs.py",
     "old": "        with lm_autocast(model):\n",
     "new": "        with (lm_autocast(model) if torch.is_grad_enabled() else torch.autocast('cpu', enabled=False)):\n",
     "tests": RL},
    {"name": "reference_copy_in_another_precision", "file": "rl/policy.py",
     "old": "self.model = copy.deepcopy(policy).requires_grad_(False)",
     "new": "self.model = __import__('training.models').lm.set_precision(copy.deepcopy(policy), 'fp32').requires_grad_(False)",
     "tests": RL},
    {"name": "rollout_generates_in_fp32", "file": "rl/rollout.py",
     "old": "    with dropout_off(model), lm_autocast(model):", "new": "    with dropout_off(model):", "tests": PATHS},
    {"name": "generate_ignores_precision", "file": "generation/generate.py",
     "old": "        with lm_autocast(model):", "new": "        with torch.autocast('cpu', enabled=False):", "tests": PATHS},
    {"name": "lm_precision_ignores_the_option", "file": "training/precision.py",
     "old": "    setattr(model, PRECISION_ATTR, precision)", "new": "    setattr(model, PRECISION_ATTR, None)",
     "tests": PATHS},
    {"name": "module_drops_its_precision_option", "file": 'rl/policy_module.py',
     "old": '**lm.load_kwargs())', "new": '**{**lm.load_kwargs(), "precision": None})',
     "tests": [F + "test_modules_pass_their_precision_option_to_the_lm"]},
    {"name": "score_cache_key_without_precision", "file": "retrieval/lsr_lm.py",
     "old": '            self.fingerprint += f"-{lm_precision(model)}"', "new": "            pass",
     "tests": [F + "test_lsr_score_cache_key_holds_the_lm_precision"]},
    # -- shared-prefix scoring ----------------------------------------------------------------------------------
    {"name": "prefix_cache_not_expanded_per_row", "file": "generation/scoring.py",
     "old": "    past.batch_repeat_interleave(rows)\n", "new": "", "tests": S},
    {"name": "prefix_cache_reused_across_batches", "file": "generation/scoring.py",
     "old": "    past = copy.deepcopy(cache)", "new": "    past = cache", "tests": S},
    {"name": "suffix_positions_restart_at_zero", "file": "generation/scoring.py",
     "old": "position_ids=position_ids(mask)[:, prefix:],", "new": "position_ids=position_ids(mask[:, prefix:]),",
     "tests": S},
    {"name": "suffix_positions_from_columns", "file": "generation/scoring.py",
     "old": "position_ids=position_ids(mask)[:, prefix:],",
     "new": "position_ids=torch.arange(prefix, mask.shape[1])[None].expand(len(rows), -1),", "tests": S},
    {"name": "suffixes_padded_on_the_right", "file": "generation/scoring.py",
     "old": 'ids, mask = pad([suffixes[i] for i in rows], pad_id, side="left")',
     "new": 'ids, mask = pad([suffixes[i] for i in rows], pad_id, side="right")', "tests": S},
    {"name": "prefix_masked_out", "file": "generation/scoring.py",
     "old": "mask = torch.cat([torch.ones(len(rows), prefix,", "new": "mask = torch.cat([torch.zeros(len(rows), prefix,",
     "tests": S},
    {"name": "prefix_swallows_a_whole_prompt", "file": "generation/scoring.py",
     "old": "    limit = min(len(p) for p in prompts) - 1", "new": "    limit = min(len(p) for p in prompts)", "tests": S},
    {"name": "prefix_path_never_taken", "file": "generation/scoring.py",
     "old": "    if prefix >= MIN_SHARED_PREFIX:", "new": "    if prefix >= 10 ** 6:", "tests": S},
    # -- shared-prefix generation -------------------------------------------------------------------------------
    {"name": "generate_masks_the_prefix", "file": "generation/generate.py",
     "old": '"attention_mask": torch.cat([torch.ones_like(head), mask], 1),',
     "new": '"attention_mask": torch.cat([torch.zeros_like(head), mask], 1),', "tests": GEN},
    {"name": "generate_suffixes_padded_on_the_right", "file": "generation/generate.py",
     "old": 'ids, mask = pad([encoded[i][prefix:] for i in rows], tokenizer.pad_token_id, "left")',
     "new": 'ids, mask = pad([encoded[i][prefix:] for i in rows], tokenizer.pad_token_id, "right")', "tests": GEN},
    {"name": "generate_prefix_cache_never_used", "file": "generation/generate.py",
     "old": "if prefix >= MIN_SHARED_PREFIX else None", "new": "if prefix >= 10 ** 6 else None", "tests": GEN},
]
