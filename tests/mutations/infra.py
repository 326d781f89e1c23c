"""Trainer side of issue 23 (train.py, training/sharding.py): the debug preset, checkpoints read by hand, FSDP2
activation checkpointing."""

CK = "tests/test_cli_checkpoints.py"

MUTATIONS = [
    {"name": "sharded_ckpt_path_under_any_strategy", "file": "train.py",
     "old": "        if path.is_dir() and not reads_sharded_checkpoints(",
     "new": "        if False and not reads_sharded_checkpoints(",
     "tests": [CK + "::test_sharded_ckpt_path_under_a_single_process_strategy_is_refused_naming_the_preset"]},
    {"name": "init_from_folder_refused", "file": "train.py",
     "old": "        check_checkpoint_path(model[\"init_args\"][\"init_from\"], \"model.init_args.init_from\")",
     "new": "        check_checkpoint_path(model[\"init_args\"][\"init_from\"], \"model.init_args.init_from\", sharded_ok=False)",
     "tests": [CK + "::test_init_from_a_sharded_folder_passes_the_start_check"]},
    {"name": "fsdp_string_strategy_not_reading_folders", "file": "train.py",
     "old": "        return strategy.startswith(\"fsdp\")", "new": "        return False",
     "tests": [CK + "::test_which_strategies_read_a_sharded_checkpoint"]},
    {"name": "debug_preset_keeps_the_experiment_checkpoint", "file": "train.py",
     "old": "            config[\"callbacks\"] = without_checkpoints(config)", "new": "            pass",
     "tests": ["tests/test_cli_debug.py::test_debug_run_is_short_and_writes_no_log_nor_checkpoint"]},
    {"name": "activation_checkpointing_on_a_value_head", "file": "training/sharding.py",
     "old": "    if activation_checkpointing and blocks:", "new": "    if activation_checkpointing:",
     "tests": ["tests/test_sharding_options.py"]},
    {"name": "activation_checkpointing_not_applied", "file": "training/sharding.py",
     "old": "        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={\"use_reentrant\": False})",
     "new": "        pass",
     "tests": ["tests/test_sharding_options.py"]},
    {"name": "library_deprecations_shown", "file": "training/quiet.py",
     "old": "    for message in LIBRARY_DEPRECATIONS:", "new": "    for message in LIBRARY_DEPRECATIONS[:0]:",
     "tests": ["tests/test_cli_quiet.py"]},
    {"name": "manual_optimisation_warning_shown_in_a_real_fit", "file": "training/quiet.py",
     "old": "    warnings.filterwarnings(\"ignore\", message=MANUAL_OPTIMISATION_CHECKPOINT)",
     "new": "    pass", "tests": ["tests/test_cli_quiet.py"]},
    {"name": "training_package_silent", "file": "train.py",
     "old": "\"rl\", \"tasks\", \"training\")", "new": "\"rl\", \"tasks\")",
     "tests": ["tests/test_layers.py::test_every_package_logs_to_the_console_through_train_py"]},
]
