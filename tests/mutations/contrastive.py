"""Deliberate one-line bugs in the retrievers (retrieval/losses.py, retrieval/contrastive.py,
lightning_modules/contrastive_retriever.py, lightning_modules/hybrid_retriever.py, lightning_modules/bm25_retriever.py);
each must make the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area contrastive"""

LOSSES = "tests/test_losses_metrics.py"
MOCO = "tests/test_contriever_module.py"
TOY = "tests/test_extension_retrieval_loss.py::test_toy_loss_from_a_config_is_what_the_step_optimises"
HYBRID = "tests/test_fusion_hybrid.py::test_hybrid_rrf_and_weighted_with_pagerank"

MUTATIONS = [
    # the InfoNCE formula
    {"name": "infonce_multiplies_by_temperature", "file": "retrieval/losses.py",
     "old": "    logits = scores / temperature\n", "new": "    logits = scores * temperature\n",
     "tests": [f"{LOSSES}::test_contrastive_loss_by_hand"]},
    {"name": "infonce_keeps_false_negatives", "file": "retrieval/losses.py",
     "old": "        logits = logits.masked_fill(exclude, float(\"-inf\"))\n", "new": "",
     "tests": [f"{LOSSES}::test_contrastive_loss_excludes_false_negatives"]},
    {"name": "infonce_class_drops_its_temperature", "file": "retrieval/losses.py",
     "old": "return contrastive_loss(scores, targets, self.temperature, exclude)",
     "new": "return contrastive_loss(scores, targets, 1.0, exclude)",
     "tests": [f"{MOCO}::test_moco_loss_by_hand"]},
    # the configured loss is what both training paths optimise
    {"name": "step_ignores_the_configured_loss", "file": "lightning_modules/contrastive_retriever.py",
     "old": "return self.loss(scores, targets, exclude), in_batch_accuracy(scores, targets, exclude)",
     "new": "return InfoNCE()(scores, targets, exclude), in_batch_accuracy(scores, targets, exclude)",
     "tests": [TOY]},
    {"name": "gradcache_step_ignores_the_configured_loss", "file": "lightning_modules/contrastive_retriever.py",
     "old": "result = grad_cache(encoders, lambda q, p=keys: self._loss(q, p, batch),",
     "new": "result = grad_cache(encoders, lambda q, p=keys: (InfoNCE()(*contrastive_scores(q, p, batch)), 0.0),",
     "tests": [f"{TOY}[2]"]},
    # MoCo: the queue's scores, the momentum update, the ring buffer
    {"name": "moco_batch_keys_are_negatives", "file": "retrieval/contrastive.py",
     "old": "    if queue is not None and not queue_in_batch:\n", "new": "    if False:\n",
     "tests": [f"{MOCO}::test_moco_loss_by_hand"]},
    {"name": "moco_momentum_swapped", "file": "retrieval/contrastive.py",
     "old": "p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)", "new": "p_k.mul_(1 - m).add_(p_q.detach(), alpha=m)",
     "tests": [f"{MOCO}::test_ema_update_and_ring_buffer_by_hand"]},
    {"name": "moco_ring_buffer_pointer_not_wrapped", "file": "retrieval/contrastive.py",
     "old": "    ptr.copy_((ptr + keys.shape[0]) % size)\n", "new": "    ptr.copy_(torch.clamp(ptr + keys.shape[0], max=size - 1))\n",
     "tests": [f"{MOCO}::test_ema_update_and_ring_buffer_by_hand"]},
    # settings reach the code
    {"name": "query_encoder_truncates_like_passages", "file": "lightning_modules/contrastive_retriever.py",
     "old": "self.query_encoder = build_encoder(s, normalize, s.query_max_length, lora)",
     "new": "self.query_encoder = build_encoder(s, normalize, s.passage_max_length, lora)",
     "tests": [f"{MOCO}::test_configure_model_is_idempotent_and_builds_the_dtype_asked"]},
    {"name": "hybrid_ignores_the_prior_weight", "file": "lightning_modules/hybrid_retriever.py",
     "old": "run = mix_prior(run, prior, p.weight, log_prior=p.log)", "new": "run = mix_prior(run, prior, 0.1, log_prior=p.log)",
     "tests": [HYBRID]},
    {"name": "bm25_retriever_ignores_k1", "file": "lightning_modules/bm25_retriever.py",
     "old": "bm25 = BM25(corpus[\"ids\"], corpus[\"texts\"], k1=b.k1,",
     "new": "bm25 = BM25(corpus[\"ids\"], corpus[\"texts\"], k1=0.9,",
     "tests": ["tests/test_fusion_hybrid.py::test_bm25_retriever_ranks_with_the_configured_parameters"]},
    {"name": "hybrid_weights_ignored", "file": "lightning_modules/hybrid_retriever.py",
     "old": "run = weighted_fusion([sparse, dense], f.weights, f.normalization)",
     "new": "run = weighted_fusion([sparse, dense], None, f.normalization)", "tests": [HYBRID]},
]
