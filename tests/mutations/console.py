"""Output a person reads (issue 23 item 7): callbacks/console.py and training/quiet.py."""

T = "tests/test_console.py"

MUTATIONS = [
    {"name": "test_table_columns_not_collapsed", "file": "callbacks/console.py",
     "old": "        return results[:1]\n", "new": "        return results[:0] + results\n",
     "tests": [T]},
    {"name": "rl_bar_counts_epochs", "file": "callbacks/console.py",
     "old": "        if not self._unbounded_epochs():\n            return super()",
     "new": "        if True:\n            return super()",
     "tests": [T]},
    {"name": "rl_bar_step_not_updated", "file": "callbacks/console.py",
     "old": "            self.progress.update(self.train_progress_bar_id, description=",
     "new": "            self.progress.update(self.train_progress_bar_id, visible=True) or (",
     "tests": [T]},
    {"name": "default_bar_not_swapped", "file": "callbacks/console.py",
     "old": "        if type(callback) is RichProgressBar:", "new": "        if False:",
     "tests": [T]},
    {"name": "manual_optimisation_warning_shown", "file": "training/quiet.py",
     "old": "    warnings.filterwarnings(\"ignore\", message=MANUAL_OPTIMISATION_CHECKPOINT)",
     "new": "    pass",
     "tests": [T]},
    {"name": "bitsandbytes_kernel_noise_shown", "file": "training/quiet.py",
     "old": "setLevel(logging.ERROR)", "new": "setLevel(logging.WARNING)",
     "tests": ["tests/test_cli_errors.py::test_start_prints_no_bitsandbytes_kernel_noise_nor_tips"]},
]
