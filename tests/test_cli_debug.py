"""The debug preset (configs/trainer/debug.yaml) layers last on any experiment: a few batches, two steps, no
logger, no checkpoint, files under its own folder."""

import logging

import pytest
import yaml

from test_cli_errors import dpr_args  # noqa: F401  (the tiny DPR run's arguments, a fixture)
from test_configs import print_config
from train import cli_main

DEBUG = "configs/trainer/debug.yaml"
# a retriever, an RL method with its own ModelCheckpoint, an RL method bounded by max_steps, an inference family
EXPERIMENTS = ["configs/dpr_scifact.yaml", "configs/score_stage1_arithmetic.yaml", "configs/search_r1_grpo_nq.yaml",
               "configs/rag_bm25_nq.yaml", "configs/replug_lsr_nq.yaml"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_preset_layers_on_shipped_configs(experiment, capsys):
    alone = print_config(["--config", experiment], capsys)
    config = print_config(["--config", experiment, "--config", DEBUG], capsys)
    preset = yaml.safe_load(open(DEBUG))["trainer"]
    for key, value in preset.items():
        assert config["trainer"][key] == value, key
    assert config["model"] == alone["model"] and config["data"] == alone["data"]  # the experiment is untouched


@pytest.mark.usefixtures("one_thread")
def test_debug_run_is_short_and_writes_no_log_nor_checkpoint(dpr_args, tmp_path, caplog):  # noqa: F811
    # the experiment lists a ModelCheckpoint (as the RL configs do): the preset's enable_checkpointing wins
    extra = tmp_path / "with_checkpoint.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                     "      init_args:\n        every_n_train_steps: 1\n")
    root = tmp_path / "debug"
    with caplog.at_level(logging.INFO):
        cli = cli_main([*dpr_args, "--data.init_args.batch_size", "1", "--data.init_args.eval_batch_size", "2",
                        "--config", str(extra), "--config", DEBUG, "--trainer.default_root_dir", str(root)])
    trainer = cli.trainer
    assert trainer.global_step == 2  # 6 training batches of one query, two steps
    assert trainer.num_test_batches == [2, 2]  # 6 corpus batches, 2 query batches: two each
    assert trainer.logger is None and trainer.checkpoint_callback is None
    assert "1 ModelCheckpoint callback(s) of the config not used" in caplog.text
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("events.out.tfevents.*"))
    assert not (tmp_path / "runs").exists()  # dpr_args' logger folder: the logger is off
    assert (root / "export").is_dir()  # the default run still tests and exports, under the preset's folder
