"""Deliberate one-line bugs in the nothing-lost guards (issue 22): exact resume under epoch-based schedules
(training/schedule.py), the divergence guard, atomic checkpoints and exports (training/atomic_files.py,
callbacks/atomic_checkpoint.py), run folders and the launcher's ranks. Run:
.venv/bin/python tests/mutation_check.py --area lost"""

T = "tests/test_nothing_lost.py"
R = "tests/test_resume.py::test_contrastive_resume_equals_uninterrupted"

MUTATIONS = [
    # the schedule counts its steps with the loader Lightning builds before restoring the checkpoint, and keeps it
    {"name": "schedule_keeps_the_early_loader", "file": "training/schedule.py",
     "old": "    if built_here and loop._combined_loader is not None:", "new": "    if False:",
     "tests": [f"{R}[dpr-mid_epoch]"]},
    {"name": "schedule_keeps_the_early_loader_retrobust", "file": "training/schedule.py",
     "old": "    if built_here and loop._combined_loader is not None:", "new": "    if False:",
     "tests": ["tests/test_resume_shipped.py::test_retrobust_resume_under_the_shipped_schedule"]},
    # no NaN check: the diverged run is tested and exported
    {"name": "missing_nan_check", "file": "callbacks/divergence.py",
     "old": "        if finite:\n            return", "new": "        return",
     "tests": [f"{T}::test_a_diverged_run_stops_with_the_step_and_exports_nothing"]},
    {"name": "grad_check_sees_nothing", "file": "callbacks/divergence.py",
     "old": "    if bool(finite.all()):", "new": "    if True:",
     "tests": [f"{T}::test_the_first_non_finite_gradient_is_named"]},
    # no temporary file: the checkpoint is written into its final name
    {"name": "checkpoint_written_in_place", "file": "training/atomic_files.py",
     "old": "    tmp = path.parent / f\".{path.name}.tmp-{_tag()}\"", "new": "    tmp = path",
     "tests": [f"{T}::test_a_full_disk_keeps_the_previous_checkpoint_whole"]},
    # Lightning's own CheckpointIO (temporary file in $TMPDIR, moved: a copy across filesystems)
    {"name": "lightning_checkpoint_io", "file": "callbacks/atomic_checkpoint.py",
     "old": "        strategy.checkpoint_io = AtomicCheckpointIO()", "new": "        pass",
     "tests": [f"{T}::test_a_kill_during_a_checkpoint_write_keeps_the_previous_one"]},
    {"name": "stale_temporaries_kept", "file": "training/atomic_files.py",
     "old": "            if pid.isdigit() and not _alive(int(pid)):", "new": "            if False:",
     "tests": [f"{T}::test_a_kill_during_a_checkpoint_write_keeps_the_previous_one"]},
    # the loader does not check the incomplete marker
    {"name": "incomplete_export_loads", "file": "training/atomic_files.py",
     "old": "        if (folder / INCOMPLETE).exists():", "new": "        if False:",
     "tests": [f"{T}::test_an_export_interrupted_after_the_weights_leaves_no_folder_that_loads"]},
    {"name": "export_modes_kept", "file": "training/atomic_files.py",
     "old": "            p.chmod(mode)", "new": "            pass",
     "tests": [f"{T}::test_an_export_is_complete_marked_and_readable_as_the_umask_allows[18]"]},
    {"name": "export_replaces_another", "file": "training/atomic_files.py",
     "old": "    while free.exists():", "new": "    while False:",
     "tests": [f"{T}::test_an_export_never_replaces_another"]},
    # run folders
    {"name": "no_latest_pointer", "file": "callbacks/run_folders.py",
     "old": "            point_latest(version)", "new": "            pass",
     "tests": [f"{T}::test_two_runs_of_a_score_config_keep_their_own_folders_and_stage2_finds_the_latest"]},
    {"name": "failed_run_folder_kept", "file": "callbacks/run_folders.py",
     "old": "            shutil.rmtree(version, ignore_errors=True)", "new": "            pass",
     "tests": [f"{T}::test_a_failed_run_leaves_no_version_folder"]},
    # ranks outlive a failed launcher
    {"name": "no_parent_death_signal", "file": "train.py",
     "old": "    die_with_launcher()\n    main()", "new": "    main()",
     "tests": [f"{T}::test_a_port_clash_fails_fast_and_leaves_no_rank_behind"]},
]
