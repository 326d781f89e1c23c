"""Deliberate one-line bugs in sharding and distributed GradCache; each must make the named tests fail.
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
]
