"""Resume that says what it does (issue 22, item 5) and checkpoint paths checked before anything is built
(item 9), through train.py in-process with tiny models: a model option the config changes against the
checkpoint is used and named with both values, another method's checkpoint is refused naming both classes,
and a missing, empty, truncated or folder ``--ckpt_path`` / ``init_from`` is one line naming the file."""

from pathlib import Path

import pytest
import torch

from train import cli_main, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dpr_args(tiny_bert_dir, tiny_beir_dir, tmp_path):
    return ["--config", "configs/dpr_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.encoder.eval_passage_max_length", "32",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
            "--data.init_args.num_negatives", "0", "--data.init_args.eval_batch_size", "6",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path / "run")]


@pytest.fixture
def dpr_checkpoint(dpr_args, tmp_path) -> Path:
    """A DPR checkpoint after 1 step, trained with temperature 0.05."""
    cli = cli_main(["fit", *dpr_args, "--model.init_args.loss.init_args.temperature", "0.05", "--trainer.max_steps", "1"])
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path)
    assert torch.load(ckpt, weights_only=False)["hyper_parameters"]["loss"]["init_args"]["temperature"] == 0.05
    return ckpt


def test_resume_uses_a_changed_option_and_names_both_values(dpr_args, dpr_checkpoint, tmp_path):
    with pytest.warns(UserWarning, match=r"model.init_args.loss: checkpoint \{.*'temperature': 0.05\}\}, config \{.*'temperature': 0.5\}\} -> using"):
        resumed = cli_main(["fit", *dpr_args, "--model.init_args.loss.init_args.temperature", "0.5", "--trainer.max_steps", "2",
                            "--ckpt_path", str(dpr_checkpoint)])
    assert resumed.model.loss.temperature == 0.5 and resumed.trainer.global_step == 2


def test_resume_with_the_same_options_says_nothing(dpr_args, dpr_checkpoint, recwarn):
    resumed = cli_main(["fit", *dpr_args, "--model.init_args.loss.init_args.temperature", "0.05", "--trainer.max_steps", "2",
                        "--ckpt_path", str(dpr_checkpoint)])
    assert resumed.model.loss.temperature == 0.05 and resumed.trainer.global_step == 2
    assert not [w for w in recwarn if "--ckpt_path" in str(w.message)]


def test_checkpoint_of_another_method_is_refused_naming_both_classes(dpr_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/score_stage1_arithmetic.yaml", "--ckpt_path", str(dpr_checkpoint)])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: CheckpointError: --ckpt_path {dpr_checkpoint}: a checkpoint of ")
    assert "ContrastiveRetriever" in last and "but the config's model is lightning_modules.score.SCoRe" in last


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.ckpt"
    folder.mkdir()
    return {"missing": (tmp_path / "nope.ckpt", "no such file"),
            "empty": (empty, "the file is empty (0 bytes)"),
            "truncated": (truncated, "not a complete checkpoint"),
            "folder": (folder, "is a folder but not a sharded checkpoint")}


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "folder"])
def test_bad_ckpt_path_is_one_line_naming_the_file(dpr_args, tmp_path, capsys, kind):
    path, problem = _bad_checkpoints(tmp_path)[kind]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *dpr_args, "--ckpt_path", str(path)])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: CheckpointError: --ckpt_path {path}: {problem}"), last


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "folder"])
def test_bad_init_from_is_one_line_naming_the_file(tmp_path, capsys, kind):
    path, problem = _bad_checkpoints(tmp_path)[kind]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/score_stage2_arithmetic.yaml", "--model.init_args.init_from", str(path)])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: CheckpointError: model.init_args.init_from {path}: {problem}"), last


def test_sharded_checkpoint_folder_passes_the_check(tmp_path):
    from training.checkpoint_checks import check_checkpoint_path, read_hyperparameters

    folder = tmp_path / "sharded.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"x")
    torch.save({"hyper_parameters": {"_class_path": "a.B", "lr": 0.1}}, folder / "meta.pt")
    assert check_checkpoint_path(folder, "--ckpt_path") == folder
    assert read_hyperparameters(folder, "--ckpt_path") == {"_class_path": "a.B", "lr": 0.1}
