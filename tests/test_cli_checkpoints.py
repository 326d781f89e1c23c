"""A checkpoint read by hand (issue 23, item 8's follow-up): a sharded checkpoint (the folder an FSDP2 run
writes) is accepted as SCoRe's ``init_from`` (the module reads folders), and as ``--ckpt_path`` only under a
strategy that reads folders; any other strategy would call ``torch.load`` on it (IsADirectoryError), so it is
refused before anything is built, naming the option and the preset to add."""

from pathlib import Path

import pytest
import torch

from test_cli_errors import dpr_args  # noqa: F401  (the tiny DPR run's arguments, a fixture)
from train import check_start_files, main, reads_sharded_checkpoints
from training.checkpoint_checks import CheckpointError


def sharded_folder(root: Path, hparams: dict) -> Path:
    """What Lightning's ModelParallelStrategy writes: ``meta.pt`` (all but the tensors) and torch.distributed.
    checkpoint's ``.metadata`` index beside the shards."""
    folder = root / "sharded.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"x")
    torch.save({"hyper_parameters": hparams}, folder / "meta.pt")
    return folder


@pytest.mark.usefixtures("one_thread")
def test_sharded_ckpt_path_under_a_single_process_strategy_is_refused_naming_the_preset(dpr_args, tmp_path,  # noqa: F811
                                                                                        capsys):
    folder = sharded_folder(tmp_path, {"_class_path": "lightning_modules.ContrastiveRetriever"})
    with pytest.raises(SystemExit) as exit_:
        main(["test", *dpr_args, "--ckpt_path", str(folder)])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: CheckpointError: --ckpt_path {folder}: a sharded checkpoint"), last
    assert "configs/trainer/fsdp2.yaml" in last and "configs/trainer/fsdp2_cpu.yaml" in last


@pytest.mark.parametrize("strategy, reads", [
    ({"class_path": "training.sharding.FSDP2Strategy", "init_args": {}}, True),
    ({"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}, True),
    ("fsdp", True), ("auto", False), ("ddp", False), (None, False),
    ({"class_path": "lightning.pytorch.strategies.DDPStrategy"}, False)])
def test_which_strategies_read_a_sharded_checkpoint(strategy, reads):
    assert reads_sharded_checkpoints({"strategy": strategy}) is reads


def test_init_from_a_sharded_folder_passes_the_start_check(tmp_path):
    folder = sharded_folder(tmp_path, {})
    config = {"subcommand": "fit", "fit": {"model": {"class_path": "lightning_modules.score.SCoRe",
                                                     "init_args": {"init_from": str(folder)}}}}
    check_start_files(config)  # was: "is a folder, not a checkpoint file", though SCoRe reads the folder
    (folder / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"init_from .*: is a folder but not a sharded checkpoint"):
        check_start_files(config)
