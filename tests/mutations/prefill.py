"""Deliberate one-line bugs in the rollout prefill that computes each distinct prompt and the shared prefix once
(generation.prefill); each must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area prefill"""

T = "tests/test_prefill.py::"
LOGITS = [T + "test_prefilled_cache_gives_each_prompts_own_next_token_logits",
          T + "test_repeats_without_a_long_prefix_are_deduplicated_and_distinct_prompts_left_alone"]
ROLLOUT = [T + "test_greedy_rollout_with_prefill_equals_the_plain_prefill"]
LP = [T + "test_logprobs_with_a_shared_prefix_equal_the_plain_ones_and_run_it_once_per_micro_batch"]
GRAD = [T + "test_gradients_through_the_repeated_prefix_equal_the_plain_ones"]
CP = [T + "test_common_prefix_counts_equal_real_leading_columns"]
RL = [T + "test_rl_old_new_and_reference_logprobs_share_the_rollouts_prefix"]

MUTATIONS = [
    {"name": "prefill_rows_in_distinct_order", "file": "generation/prefill.py",
     "old": "    rows = torch.tensor(which, dtype=torch.long)",
     "new": "    rows = torch.tensor(sorted(which), dtype=torch.long)", "tests": LOGITS},
    {"name": "prefill_suffix_positions_from_zero", "file": "generation/prefill.py",
     "old": "position_ids=position_ids(m)[:, n_prefix:]", "new": "position_ids=position_ids(m[:, n_prefix:])",
     "tests": LOGITS},
    {"name": "prefill_suffix_positions_from_the_columns", "file": "generation/prefill.py",
     "old": "position_ids=position_ids(m)[:, n_prefix:]",
     "new": "position_ids=torch.arange(n_prefix, m.shape[1])[None].expand(m.shape[0], -1)", "tests": LOGITS},
    {"name": "prefill_padding_attended", "file": "generation/prefill.py",
     "old": "    mask = torch.cat([torch.ones_like(head), suffix_mask], 1)",
     "new": "    mask = torch.cat([torch.ones_like(head), torch.ones_like(suffix_mask)], 1)", "tests": LOGITS},
    {"name": "prefill_whole_prompt_in_cache", "file": "generation/prefill.py",
     "old": "ids[:, n_prefix:-1].to(device), attention_mask=m,", "new": "ids[:, n_prefix:].to(device), attention_mask=mask.to(device),",
     "tests": LOGITS},
    {"name": "prefill_prefix_cache_not_used", "file": "generation/prefill.py",
     "old": "repeat_cache(prefix_cache(model, unique[0][:n_prefix]), len(unique)) if n_prefix else DynamicCache()",
     "new": "DynamicCache()", "tests": LOGITS},
    {"name": "rollout_prefill_keeps_the_plain_ids", "file": "rl/rollout.py",
     "old": "                    ids, am, cache = first\n",
     "new": "                    _, _, cache = first\n                    ids, am = pad(contexts, pad_id, 'left')\n",
     "tests": ROLLOUT},
    # -- log-probs with a shared prefix (generation.logprobs) ----------------------------------------------------
    {"name": "logprob_prefix_positions_from_zero", "file": "generation/logprobs.py",
     "old": "position_ids=position_ids(am)[:, prefix:],", "new": "position_ids=position_ids(am[:, prefix:]),",
     "tests": LP + GRAD},
    {"name": "logprob_prefix_not_repeated_per_row", "file": "generation/logprobs.py",
     "old": "                past.batch_repeat_interleave(ids.shape[0])\n", "new": "", "tests": LP},
    {"name": "logprob_prefix_detached", "file": "generation/logprobs.py",
     "old": "                past.batch_repeat_interleave(ids.shape[0])\n",
     "new": "                past.batch_repeat_interleave(ids.shape[0])\n"
            "                for layer in past.layers: layer.keys, layer.values = layer.keys.detach(), layer.values.detach()\n",
     "tests": GRAD},
    {"name": "logprob_prefix_mask_covers_suffix_only", "file": "generation/logprobs.py",
     "old": "out = model(input_ids=ids[:, prefix:], attention_mask=am,",
     "new": "out = model(input_ids=ids[:, prefix:], attention_mask=am[:, prefix:],", "tests": LP},
    {"name": "logprob_prefix_used_under_checkpointing", "file": "generation/logprobs.py",
     "old": '(getattr(model, "is_gradient_checkpointing", False) or is_sharded(model))',
     "new": "is_sharded(model)", "tests": [T + "test_no_prefix_under_gradient_checkpointing"]},
    {"name": "common_prefix_counts_padding", "file": "generation/logprobs.py",
     "old": " & attention_mask[:, :limit].bool().all(0)", "new": "", "tests": CP},
    {"name": "common_prefix_ignores_minimum", "file": "generation/logprobs.py",
     "old": "    return n if n >= MIN_SHARED_PREFIX else 0", "new": "    return n", "tests": CP},
    {"name": "rollouts_select_drops_prefix", "file": "rl/rollout.py",
     "old": "{k: v[idx] for k, v in self.counters.items()}, self.prefix)",
     "new": "{k: v[idx] for k, v in self.counters.items()})", "tests": RL},
    {"name": "reference_ignores_the_rollouts_prefix", "file": "rl/policy_module.py",
     "old": "min(r.prompt_lengths), r.prefix)", "new": "min(r.prompt_lengths))", "tests": RL},
    {"name": "update_ignores_the_rollouts_prefix", "file": "rl/update.py",
     "old": "with_hidden=value_head is not None, prefix=r.prefix)", "new": "with_hidden=value_head is not None)",
     "tests": RL},
    {"name": "rollout_old_logprobs_without_prefix", "file": "rl/rollout.py",
     "old": "                                             prefix=prefix).logprobs.cpu()",
     "new": "                                             prefix=0).logprobs.cpu()", "tests": RL},
    {"name": "lsr_scoring_ignores_shared_prefix_option", "file": "retrieval/lsr_lm.py",
     "old": "shared_prefix=scoring.shared_prefix)\n    with torch.autocast",
     "new": "shared_prefix=True)\n    with torch.autocast",
     "tests": [T + "test_lsr_scoring_option_runs_whole_prompts_or_the_shared_prefix_once"]},
]
