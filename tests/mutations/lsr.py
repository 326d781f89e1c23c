"""Deliberate one-line bugs in REPLUG LSR (retrieval/lsr.py, retrieval/lsr_lm.py, retrieval/lsr_retriever.py,
lightning_modules/replug_lsr.py); each must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area lsr"""

T = "tests/test_replug_lsr.py"
LOSS = [f"{T}::test_lsr_loss_by_hand_both_directions"]
GRAD = [f"{T}::test_gradients_reach_the_retriever_and_never_the_lm"]
CACHE_UNIT = [f"{T}::test_cache_scores_only_new_triples_and_survives_reopening", f"{T}::test_cache_is_keyed_by_lm_and_prompt"]
CACHE_MODULE = [f"{T}::test_cached_lm_scores_equal_fresh_scores_and_are_invalidated_by_lm_or_prompt"]
LM_FIT = [f"{T}::test_lm_setup_fit_excludes_own_passage_and_reports_perplexity"]
SETTINGS = [f"{T}::test_settings_groups_reach_the_encoders_and_the_lm"]

MUTATIONS = [
    # the loss
    {"name": "flipped_kl", "file": "retrieval/lsr.py",
     "old": '    if direction == "p_r||q":\n        kl =', "new": '    if direction != "p_r||q":\n        kl =',
     "tests": LOSS},
    {"name": "retriever_temperature_is_beta", "file": "retrieval/lsr.py",
     "old": "torch.log_softmax(retriever_scores.float() / gamma, dim=-1)",
     "new": "torch.log_softmax(retriever_scores.float() / beta, dim=-1)", "tests": LOSS},
    {"name": "lm_temperature_dropped", "file": "retrieval/lsr.py",
     "old": "lm_logliks.detach().float().to(log_p_r.device) / beta",
     "new": "lm_logliks.detach().float().to(log_p_r.device)", "tests": LOSS},
    {"name": "softmax_over_probabilities", "file": "retrieval/lsr.py",
     "old": "lm_logliks.detach().float().to(log_p_r.device) / beta",
     "new": "lm_logliks.detach().float().to(log_p_r.device).exp() / beta", "tests": LOSS},
    {"name": "kl_mean_over_documents_too", "file": "retrieval/lsr.py",
     "old": "    return kl.mean()", "new": "    return kl.mean() / retriever_scores.shape[1]", "tests": LOSS},
    # the gradient path
    {"name": "detached_retriever_scores", "file": "retrieval/lsr_retriever.py",
     "old": 'return torch.einsum("bh,bkh->bk", q, p.view(len(inputs), -1, p.shape[-1]))',
     "new": 'return torch.einsum("bh,bkh->bk", q, p.view(len(inputs), -1, p.shape[-1])).detach()', "tests": GRAD},
    {"name": "atlas_passage_side_not_frozen", "file": "lightning_modules/replug_lsr.py",
     "old": "            self.passage_encoder.requires_grad_(False)\n", "new": "", "tests": GRAD},
    {"name": "lm_weights_trainable", "file": "retrieval/lsr_lm.py",
     "old": "self.model = model.requires_grad_(False).eval()", "new": "self.model = model.eval()", "tests": GRAD},
    # the cache
    {"name": "cache_key_ignores_target", "file": "retrieval/lsr.py",
     "old": "json.dumps([x, d, y]).encode()", "new": "json.dumps([x, d]).encode()", "tests": CACHE_UNIT},
    {"name": "cache_namespace_ignores_lm", "file": "retrieval/lsr.py",
     "old": "self.namespace = settings_fingerprint(lm_id, prompt_id)",
     "new": "self.namespace = settings_fingerprint(prompt_id)", "tests": CACHE_UNIT},
    {"name": "module_cache_ignores_prompt", "file": "retrieval/lsr_lm.py",
     "old": "prompt_id = settings_fingerprint(prompt, scoring.target_prefix,",
     "new": "prompt_id = settings_fingerprint(scoring.target_prefix,", "tests": CACHE_MODULE},
    {"name": "fingerprint_skips_weights", "file": "retrieval/lsr.py",
     "old": "        if t.numel() == 0 or key in seen:", "new": "        if True:",
     "tests": [f"{T}::test_module_fingerprint_follows_the_weights_not_the_path", *CACHE_MODULE]},
    {"name": "fingerprint_keeps_load_path", "file": "retrieval/lsr.py",
     "old": 'if k != "_name_or_path"}', "new": "}",
     "tests": [f"{T}::test_module_fingerprint_follows_the_weights_not_the_path"]},
    # the settings groups reach the models
    {"name": "lsr_lm_settings_dropped", "file": "retrieval/lsr_lm.py",
     "old": "return cls(*load_causal_lm(lm.name_or_path, **lm.load_kwargs(), device=\"cpu\"))",
     "new": "return cls(*load_causal_lm(lm.name_or_path, device=\"cpu\"))", "tests": SETTINGS},
    {"name": "lsr_encoder_precision_dropped", "file": "retrieval/bi_encoder.py",
     "old": "settings.dropout, precision=settings.precision)", "new": "settings.dropout)", "tests": SETTINGS},
    {"name": "lsr_direct_checkpoint_holds_dataclasses", "file": "lightning_modules/replug_lsr.py",
     "old": "        save_settings(self)\n", "new": "        self.save_hyperparameters(ignore=[\"optimizer\"])\n",
     "tests": [f"{T}::test_a_directly_built_module_checkpoints_plain_settings"]},
    # retrieval in the LM set-up
    {"name": "own_passage_not_excluded", "file": "retrieval/lsr_retriever.py",
     "old": "row = [h for h in row if h[0] not in set(skip)][:k]", "new": "row = row[:k]", "tests": LM_FIT},
]
