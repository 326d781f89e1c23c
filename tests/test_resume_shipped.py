"""Exact resume of ReplugLSR and RetRobust under their shipped epoch-based schedules (``max_epochs`` as in
configs/replug_lsr_nq.yaml and configs/retrobust_nq.yaml, their warm-up fractions): the number of steps the
schedule spans is counted before Lightning restores the checkpoint, which must not keep a training loader
built without the saved loader state (training.schedule). DPR, DPR-LoRA and Contriever:
tests/test_resume.py. The other methods' own resume tests use ``max_epochs -1`` (an iteration-based run)."""

import json

import pytest
import torch

from test_replug_lsr import _qa_args
from test_resume import assert_same_weights, full_and_resumed
from test_retrobust import LORA, pool_dir, tiny_llama64_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_replug_lsr_resume_under_the_shipped_schedule(tiny_bert_dir, tiny_llama_dir, tmp_path):
    """6 questions in batches of 3, 2 epochs (shipped), warm-up 0.1: 4 steps == 3 + 1 resumed mid-epoch. (At
    the epoch boundary the early loader did no harm: ReplugLSR draws nothing, and the next epoch's order is
    a function of the epoch.)"""
    args = _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--model.init_args.replug.k", "0",
                    "--model.init_args.optimizer.init_args.lr", "1e-2", "--model.init_args.warmup", "0.1",
                    "--trainer.callbacks.init_args.every_n_steps", "2", "--trainer.logger", "false",
                    "--trainer.enable_model_summary", "false")
    full, resumed = full_and_resumed(args, total=4, stop=3, tmp_path=tmp_path)
    assert full.trainer.max_epochs == 2 and full.trainer.current_epoch == 2
    assert_same_weights(full, resumed)


def test_retrobust_resume_under_the_shipped_schedule(pool_dir, tiny_llama64_dir, tmp_path):  # noqa: F811
    """8 examples in batches of 2, 1 epoch (shipped), warm-up ratio 0.03: 3 steps == 2 + 1 resumed mid-epoch."""
    args = ["--model", "lightning_modules.retrobust.RetRobust", "--model.lm.name_or_path", tiny_llama64_dir,
            "--model.lm.lora", json.dumps(LORA), "--model.evaluate_base", "false", "--model.warmup", "0.03",
            "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.01",
            "--data", "datamodules.retrobust.RetRobustDataModule",
            "--data.train_file", str(pool_dir / "train.jsonl"), "--data.val_file", str(pool_dir / "dev.jsonl"),
            "--data.test_file", str(pool_dir / "test.jsonl"), "--data.corpus", str(pool_dir),
            "--data.tokenizer", tiny_llama64_dir, "--data.num_train", "8", "--data.low_rank_range", "[3, 6]",
            "--data.batch_size", "2", "--seed_everything", "3", "--trainer.accelerator", "cpu",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.max_epochs", "1"]
    full, resumed = full_and_resumed(args, total=3, stop=2, tmp_path=tmp_path)
    assert any(v.abs().sum() > 0 for n, v in full.model.state_dict().items() if "lora_B" in n)
    assert_same_weights(full, resumed)


@pytest.mark.parametrize("stop", [4, 3], ids=["mid_epoch", "epoch_boundary"])
def test_the_readme_recipe_resumes_dpr_exactly(tiny_bert_dir, tiny_beir_dir, stop, tmp_path):
    """README's recipe as written: the shipped config (3 epochs, no max_steps), ``ModelCheckpoint`` every N steps
    with ``save_last``, the run stopped after step ``stop`` and resumed from ``last.ckpt``: all 9 steps' weights
    equal the uninterrupted run's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from test_resume import _dpr_args
    from train import cli_main

    args = _dpr_args(tiny_bert_dir, tiny_beir_dir, tmp_path)

    def run(name, *extra):
        torch.manual_seed(0)
        return cli_main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / name), *extra])

    full = run("full")
    ckpt_dir = tmp_path / "dpr_ckpt"
    half = run("half", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.every_n_train_steps={stop}", "--trainer.callbacks.save_last=true",
               f"--trainer.callbacks.dirpath={ckpt_dir}",
               "--trainer.callbacks+=test_resume.StopAt", f"--trainer.callbacks.step={stop}")
    assert half.trainer.global_step == stop and any(isinstance(c, ModelCheckpoint) for c in half.trainer.callbacks)
    resumed = run("resumed", "--ckpt_path", str(ckpt_dir / "last.ckpt"))
    assert full.trainer.max_steps == -1 and full.trainer.global_step == resumed.trainer.global_step == 9
    assert_same_weights(full, resumed)
    assert full.datamodule.train_dataset.draws == resumed.datamodule.train_dataset.draws
