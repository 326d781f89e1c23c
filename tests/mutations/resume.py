"""Deliberate one-line bugs in exact resume (datamodules/resumable.py, the draw counters' state in
datamodules/beir.py and datamodules/crops.py, lightning_modules/rng_state.py); each must make the named tests
fail. Run: .venv/bin/python tests/mutation_check.py --area resume"""

T = "tests/test_resume.py"
LOADER = [f"{T}::test_loader_state_resumes_the_order_and_the_draws"]
ORDER = [f"{T}::test_epoch_order_is_a_function_of_seed_and_epoch"]
DPR = [f"{T}::test_contrastive_resume_equals_uninterrupted[dpr-mid_epoch]",
       f"{T}::test_contrastive_resume_equals_uninterrupted[dpr-epoch_boundary]"]
CONTRIEVER = [f"{T}::test_contrastive_resume_equals_uninterrupted[contriever-mid_epoch]",
              f"{T}::test_contrastive_resume_equals_uninterrupted[contriever-epoch_boundary]"]
SCORE = ["tests/test_score.py::test_resume_equals_an_uninterrupted_run"]

MUTATIONS = [
    # the loader: a plain shuffled DataLoader (no state, order from the global RNG), as before exact resume
    {"name": "plain_dataloader", "file": "datamodules/resumable.py",
     "old": "    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,",
     "new": "    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last,",
     "tests": [*LOADER, *DPR, *SCORE]},
    {"name": "sampler_ignores_the_epoch", "file": "datamodules/resumable.py",
     "old": "    def __iter__(self):\n        if self.saved_epoch",
     "new": "    def set_epoch(self, epoch):\n        pass\n\n    def __iter__(self):\n        if self.saved_epoch",
     "tests": [*LOADER, *ORDER]},
    {"name": "saved_position_applied_to_the_next_epoch", "file": "datamodules/resumable.py",
     "old": "        if self.saved_epoch is not None and self.saved_epoch != self.epoch:",
     "new": "        if False:", "tests": [*LOADER, f"{DPR[1]}"]},
    {"name": "loader_draws_from_the_global_rng", "file": "datamodules/resumable.py",
     "old": "                              generator=torch.Generator().manual_seed(seed))", "new": "                              )",
     "tests": [*DPR[:1], *CONTRIEVER[:1]]},
    {"name": "order_ignores_the_seed", "file": "datamodules/resumable.py",
     "old": "rank=rank, shuffle=True, seed=seed)", "new": "rank=rank, shuffle=True, seed=0)", "tests": ORDER},
    # the draw counters
    {"name": "pairs_draws_not_restored", "file": "datamodules/beir.py",
     "old": "        self.draws = state[\"draws\"].tolist()", "new": "        pass", "tests": DPR},
    {"name": "crops_draws_not_restored", "file": "datamodules/crops.py",
     "old": "        self.draws = state[\"draws\"].tolist()", "new": "        pass", "tests": CONTRIEVER},
    # the RNG
    {"name": "rng_not_restored", "file": "lightning_modules/rng_state.py",
     "old": "    torch.set_rng_state(rng[\"torch\"])", "new": "    pass", "tests": [*DPR, *CONTRIEVER]},
    {"name": "rng_not_restored_score", "file": "lightning_modules/rng_state.py",
     "old": "    torch.set_rng_state(rng[\"torch\"])", "new": "    pass", "tests": SCORE},
]
