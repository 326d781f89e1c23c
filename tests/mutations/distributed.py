"""Deliberate one-line bugs in sharding (FSDP2 for every trainable method, sharded resume) and distributed GradCache;
each must make the named tests fail.
Run: .venv/bin/python tests/mutation_check.py --area distributed  (the tests spawn 2 processes: minutes)"""

FSDP2 = "tests/test_fsdp2.py"

MUTATIONS = [
    {"name": "gradcache_last_chunk_of_one_encoder_only", "file": "retrieval/gradcache.py",
     "old": "        if n in last.values():",
     "new": "        if n == len(jobs) - 1:",
     "tests": [f"{FSDP2}::test_ddp_gradcache_separate_encoders_step_equals_one_process"]},
    {"name": "shard_never_applied", "file": "lightning_modules/sharding.py",
     "old": "    if mesh is None:\n        return False",
     "new": "    if True:\n        return False",
     "tests": [f"{FSDP2}::test_contrastive_retriever_fsdp2_step_equals_one_process[None]"]},
    {"name": "search_r1_reference_not_sharded", "file": "lightning_modules/search_r1.py",
     "old": "        shard(self, self.policy, self.reference.model, self.value_head)",
     "new": "        shard(self, self.policy, None, self.value_head)",
     "tests": [f"{FSDP2}::test_search_r1_grpo_fsdp2_step_equals_one_process"]},
    # FSDP2 for ReplugLSR, RetRobust, SCoRe; the 4-bit refusal; sharded resume
    {"name": "lsr_passage_encoder_sharded_instead_of_the_trained_query_encoder", "file": "lightning_modules/replug_lsr.py",
     "old": "        shard(self, self.q_encoder.model)",
     "new": "        shard(self, self.passage_encoder.model)",
     "tests": [f"{FSDP2}::test_replug_lsr_fsdp2_step_equals_one_process[query_side]"]},
    {"name": "retrobust_lm_not_sharded", "file": "lightning_modules/retrobust.py",
     "old": "        shard(self, self.lm)",
     "new": "        shard(self)",
     "tests": [f"{FSDP2}::test_retrobust_lora_fsdp2_step_equals_one_process"]},
    {"name": "score_policy_not_sharded", "file": "lightning_modules/score.py",
     "old": "        shard(self, self.policy, self.reference.model)",
     "new": "        shard(self, None, self.reference.model)",
     "tests": [f"{FSDP2}::test_score_lora_fsdp2_step_equals_one_process"]},
    {"name": "fsdp2_gradients_never_reduced", "file": "lightning_modules/sharding.py",
     "old": "    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)\n",
     "new": "    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)\n"
            "    model.set_requires_gradient_sync(False)\n",
     "tests": [f"{FSDP2}::test_retrobust_lora_fsdp2_step_equals_one_process"]},
    {"name": "fsdp2_rank0_rows_on_every_rank", "file": "lightning_modules/sharding.py",
     "old": "    def setup_environment(self) -> None:",
     "new": "    distributed_sampler_kwargs = property(lambda self: {'num_replicas': 2, 'rank': 0})\n\n"
            "    def setup_environment(self) -> None:",
     "tests": [f"{FSDP2}::test_score_lora_fsdp2_step_equals_one_process",
               f"{FSDP2}::test_replug_lsr_fsdp2_step_equals_one_process[shared]"]},
    {"name": "fsdp2_4bit_base_not_refused", "file": "lightning_modules/sharding.py",
     "old": "    if quantized:",
     "new": "    if False:",
     "tests": [f"{FSDP2}::test_a_4bit_base_is_refused_by_fsdp2"]},
    {"name": "fsdp2_resume_drops_optimizer_state", "file": "lightning_modules/sharding.py",
     "old": "    def setup_environment(self) -> None:",
     "new": "    def load_checkpoint(self, checkpoint_path, weights_only=None):\n"
            "        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)\n"
            "        [optimizer.state.clear() for optimizer in self.optimizers]\n"
            "        return checkpoint\n\n"
            "    def setup_environment(self) -> None:",
     "tests": [f"{FSDP2}::test_sharded_checkpoint_resume_equals_uninterrupted"]},
    {"name": "fsdp2_checkpoint_assembled_on_rank0", "file": "lightning_modules/sharding.py",
     "old": "super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint, process_group_backend)",
     "new": "super().__init__(data_parallel_size, tensor_parallel_size, False, process_group_backend)",
     "tests": [f"{FSDP2}::test_sharded_checkpoint_resume_equals_uninterrupted"]},
    {"name": "masked_nll_divides_by_the_local_count", "file": "generation/logprobs.py",
     "old": "        n = mean_over_ranks(n)", "new": "        n = n",
     "tests": ["tests/test_data_parallel_normaliser.py"]},
    {"name": "rl_update_divides_by_the_local_token_count", "file": "rl/update.py",
     "old": '"num_tokens": mean_over_ranks(r.loss_mask[idx].sum())', "new": '"num_tokens": r.loss_mask[idx].sum()',
     "tests": ["tests/test_data_parallel_normaliser.py"]},
    {"name": "mean_over_ranks_sums", "file": "retrieval/distributed.py",
     "old": "    return out / dist.get_world_size()", "new": "    return out",
     "tests": ["tests/test_data_parallel_normaliser.py"]},
    {"name": "retriever_encodes_the_corpus_through_the_sharded_encoder", "file": "lightning_modules/contrastive_retriever.py",
     "old": "        with full_parameters(self.passage_encoder.model):\n            return self.passage_encoder.encode(",
     "new": "        if True:\n            return self.passage_encoder.encode(",
     "tests": [f"{FSDP2}::test_contrastive_retriever_fsdp2_step_equals_one_process"]},
]
