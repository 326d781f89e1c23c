"""Deliberate one-line bugs in exact resume (datamodules/resumable.py, the draw counters' state in
datamodules/beir.py and datamodules/crops.py, training/rng_state.py, ReplugLSR's index weights and
score cache, RetRobust's adapters-only checkpoint); each must make the named tests fail. Run:
.venv/bin/python tests/mutation_check.py --area resume

The per-method resume tests (SearchR1, ReplugLSR, RetRobust) get one entry per test (``each``): mutation_check
runs pytest with -x, so a list of tests proves only that one of them fails."""

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
    {"name": "draws_not_restored", "file": "datamodules/resumable.py",
     "old": "        self.draws = state[\"draws\"].tolist()", "new": "        pass", "tests": DPR},
    {"name": "draw_not_counted", "file": "datamodules/resumable.py",
     "old": "        self.draws[i] += 1\n", "new": "",
     "tests": [f"{T}::test_drawing_datasets_refuse_workers_and_round_trip_their_counters"]},
    # the RNG
    {"name": "rng_not_restored", "file": "training/rng_state.py",
     "old": "    torch.set_rng_state(rng[\"torch\"])", "new": "    pass", "tests": [*DPR, *CONTRIEVER]},
    {"name": "rng_not_restored_score", "file": "training/rng_state.py",
     "old": "    torch.set_rng_state(rng[\"torch\"])", "new": "    pass", "tests": SCORE},
]


# -- SearchR1, ReplugLSR, RetRobust: each test on its own ------------------------------------------------------
SR1 = [f"tests/test_search_r1.py::test_grpo_resume_equals_an_uninterrupted_run[{p}]"
       for p in ("mid_epoch", "epoch_boundary")]
LSR_QA = [f"tests/test_replug_lsr.py::test_qa_resume_equals_an_uninterrupted_run[{p}]"
          for p in ("mid_epoch", "epoch_boundary")]
LSR_LM = ["tests/test_replug_lsr.py::test_lm_resume_equals_an_uninterrupted_run"]
RR = [f"tests/test_retrobust.py::test_resume_through_the_cli_equals_an_uninterrupted_run[{p}]"
      for p in ("mid_epoch", "epoch_boundary")]


def each(name: str, file: str, old: str, new: str, tests: list[str]) -> list[dict]:
    return [{"name": f"{name}[{t.split('::')[0].removeprefix('tests/test_').removesuffix('.py')}:"
                     f"{t.split('[')[1][:-1] if '[' in t else t.split('::')[1].split('_')[1]}]",
             "file": file, "old": old, "new": new, "tests": [t]} for t in tests]


_PLAIN = MUTATIONS[0]
MUTATIONS += [
    *each("plain_dataloader", _PLAIN["file"], _PLAIN["old"], _PLAIN["new"], [*SR1, *LSR_QA, *LSR_LM, *RR]),
    # sampled rollouts and LoRA dropout (ReplugLSR draws nothing in training: its encoders' dropout is off)
    *each("rng_not_restored", "training/rng_state.py", "    torch.set_rng_state(rng[\"torch\"])", "    pass",
          [*SR1, *RR]),
    # the score cache must not matter: the uninterrupted run scores with the LM, the resumed one reads the cache
    *each("cache_rounds_scores", "retrieval/lsr.py", "[(self.namespace, k, float(v)) for k, v in values.items()]",
          "[(self.namespace, k, round(float(v), 3)) for k, v in values.items()]", [*LSR_QA, *LSR_LM]),
    # ReplugLSR resumed between two index refreshes: the index of the weights the interrupted run searched with
    *each("lsr_index_weights_not_restored", "lightning_modules/replug_lsr.py",
          "        self.index_weights.resumed = checkpoint.get(IndexWeights.KEY)",
          "        self.index_weights.resumed = None", LSR_QA[:1]),
    *each("lsr_index_weights_not_kept_at_refresh", "lightning_modules/replug_lsr.py",
          "        if self.hparams.train_passage_encoder:\n            self.index_weights.refreshed(",
          "        if self.index_weights.at_refresh is None:\n            self.index_weights.refreshed(", LSR_QA[:1]),
    # RetRobust's adapters-only checkpoint read with strict_loading False: adapters silently not loaded
    *each("retrobust_adapters_not_loaded", "lightning_modules/retrobust.py", "        load_rng_state(checkpoint)",
          "        load_rng_state(checkpoint)\n        checkpoint[\"state_dict\"] = {}", RR),
]
