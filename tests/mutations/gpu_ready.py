"""Deliberate one-line bugs in REPLUG LSR's and RetRobust's wiring that the loss functions' own tests cannot see
(the module passes the wrong settings, the cache forgets a setting, a side loses its gradient, a draw misses an end
of its range, a rank normalises by its own count); each must make the named tests fail
(tests/mutation_check.py --area gpu_ready)."""

L = "tests/test_replug_lsr.py"
R = "tests/test_retrobust.py"
LSR = "lightning_modules/replug_lsr.py"
LSR_LM = "retrieval/lsr_lm.py"
CACHE = [f"{L}::test_cached_lm_scores_equal_fresh_scores_and_are_invalidated_by_lm_or_prompt"]
STEP = [f"{L}::test_training_step_passes_gamma_beta_and_direction_to_the_loss"]
SHARED = [f"{L}::test_shared_encoder_gets_gradient_through_both_sides"]

MUTATIONS = [
    {"name": "lsr_cache_key_without_reduction", "file": LSR_LM,
     "old": "prompt_id = settings_fingerprint(prompt, scoring.target_prefix, scoring.reduction, scoring.max_length)",
     "new": "prompt_id = settings_fingerprint(prompt, scoring.target_prefix, scoring.max_length)", "tests": CACHE},
    {"name": "lsr_cache_key_without_max_length", "file": LSR_LM,
     "old": "prompt_id = settings_fingerprint(prompt, scoring.target_prefix, scoring.reduction, scoring.max_length)",
     "new": "prompt_id = settings_fingerprint(prompt, scoring.target_prefix, scoring.reduction)", "tests": CACHE},
    {"name": "lsr_module_swaps_gamma_and_beta", "file": LSR,
     "old": "loss = lsr_loss(scores, logliks, self.loss.gamma, self.loss.beta, self.loss.direction)",
     "new": "loss = lsr_loss(scores, logliks, self.loss.beta, self.loss.gamma, self.loss.direction)", "tests": STEP},
    {"name": "lsr_module_ignores_direction", "file": LSR,
     "old": "loss = lsr_loss(scores, logliks, self.loss.gamma, self.loss.beta, self.loss.direction)",
     "new": "loss = lsr_loss(scores, logliks, self.loss.gamma, self.loss.beta)", "tests": STEP},
    {"name": "lsr_shared_passage_side_without_gradient", "file": "retrieval/lsr_retriever.py",
     "old": "with torch.set_grad_enabled(torch.is_grad_enabled() and train_passage_encoder):",
     "new": "with torch.no_grad():", "tests": SHARED},
    {"name": "retrobust_low_rank_never_reaches_the_end", "file": "datamodules/retrobust.py",
     "old": "rank = rng.randint(lo, hi)", "new": "rank = rng.randrange(lo, hi)",
     "tests": [f"{R}::test_low_rank_draw_covers_its_whole_range"]},
    {"name": "retrobust_loss_over_local_answer_tokens", "file": "lightning_modules/retrobust.py",
     "old": "loss = masked_nll(self.lm, tokens, self.hparams.micro_batch_size, across_ranks=True)",
     "new": "loss = masked_nll(self.lm, tokens, self.hparams.micro_batch_size, across_ranks=False)",
     "tests": ["tests/test_data_parallel_methods.py::test_retrobust_step_with_unequal_answer_lengths_equals_one_process"]},
]
