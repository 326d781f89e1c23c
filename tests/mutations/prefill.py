"""Deliberate one-line bugs in the rollout prefill that computes each distinct prompt and the shared prefix once
(generation.prefill); each must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area prefill"""

T = "tests/test_prefill.py::"
LOGITS = [T + "test_prefilled_cache_gives_each_prompts_own_next_token_logits",
          T + "test_repeats_without_a_long_prefix_are_deduplicated_and_distinct_prompts_left_alone"]
ROLLOUT = [T + "test_greedy_rollout_with_prefill_equals_the_plain_prefill"]

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
]
