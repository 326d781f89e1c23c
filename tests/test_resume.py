"""Exact resume (datamodules.resumable, training.rng_state): a run stopped after a checkpoint and resumed
from it ends on the same weights as an uninterrupted run, mid-epoch and at an epoch boundary. The runs go through
train.py's ``cli_main``; the interrupted run keeps the same ``max_steps`` (so the same LR schedule) and is
stopped by ``StopAt`` right after ``ModelCheckpoint(every_n_train_steps=stop)`` wrote its checkpoint, as a
crash or a preemption would stop it. ``full_and_resumed`` is shared with the other methods' test files."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.beir import ContrastivePairs
from datamodules.crops import CropPairs
from datamodules.resumable import train_loader
from train import cli_main

pytestmark = pytest.mark.usefixtures("one_thread")


class StopAt(Callback):
    """Stops fit after training step ``step`` (importable as ``test_resume.StopAt`` from the CLI)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def full_and_resumed(args: list[str], total: int, stop: int, tmp_path: Path):
    """(uninterrupted cli, resumed cli) of ``fit *args`` for ``total`` steps, the second stopped after step
    ``stop`` and resumed from the checkpoint written there."""
    def run(name, *extra):
        torch.manual_seed(0)
        return cli_main(["fit", *args, "--trainer.max_steps", str(total), "--trainer.default_root_dir",
                         str(tmp_path / name), *extra])

    full = run("full")
    ckpt_dir = tmp_path / "checkpoints"
    half = run("half", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.dirpath={ckpt_dir}", f"--trainer.callbacks.every_n_train_steps={stop}",
               "--trainer.callbacks.save_top_k=-1",
               "--trainer.callbacks+=test_resume.StopAt", f"--trainer.callbacks.step={stop}")
    assert half.trainer.global_step == stop
    (ckpt,) = ckpt_dir.glob("*.ckpt")
    resumed = run("resumed", "--ckpt_path", str(ckpt))
    assert full.trainer.global_step == resumed.trainer.global_step == total
    return full, resumed


def assert_same_weights(full, resumed, names=None):
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in names or a:
        assert torch.equal(a[k], b[k]), k


# -- the loader ----------------------------------------------------------------------------------------------
class Counted(torch.utils.data.Dataset):
    """Items (index, draw count): what ContrastivePairs / CropPairs seed their draws with."""

    def __init__(self, n):
        self.draws = [0] * n

    def __len__(self):
        return len(self.draws)

    def __getitem__(self, i):
        self.draws[i] += 1
        return torch.tensor([i, self.draws[i] - 1])

    def state_dict(self):
        return {"draws": torch.tensor(self.draws)}

    def load_state_dict(self, state):
        self.draws = state["draws"].tolist()


def epochs(loader, first: int, last: int, stop_after: int | None = None) -> list[list[list[int]]]:
    out = []
    for epoch in range(first, last):
        loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            out.append(batch.tolist())
            if stop_after is not None and epoch == last - 1 and i + 1 == stop_after:
                return out
    return out


@pytest.mark.parametrize("stop_after", [2, 5], ids=["mid_epoch", "epoch_boundary"])
def test_loader_state_resumes_the_order_and_the_draws(stop_after):
    """10 items, batches of 2: 5 batches an epoch. Stopped after batch ``stop_after`` of epoch 1, a fresh
    loader given the state continues exactly where an uninterrupted one goes on."""
    straight = epochs(train_loader(Counted(10), 2, seed=7, drop_last=True), 0, 3)
    first = train_loader(Counted(10), 2, seed=7, drop_last=True)
    before = epochs(first, 0, 2, stop_after)
    state = first.state_dict()
    second = train_loader(Counted(10), 2, seed=7, drop_last=True)
    second.load_state_dict(state)
    # Lightning's order on resume: iter() first, then set_epoch (the epoch it resumes into)
    after = epochs(second, 1 if stop_after < 5 else 2, 3)
    assert before + after == straight
    assert straight[0] != straight[5]  # epochs are shuffled differently
    assert {d for b in straight[5:10] for _, d in b} == {1}  # the second epoch's draws


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = epochs(train_loader(list(range(10)), 5, seed=1), 0, 2)
    b = epochs(train_loader(list(range(10)), 5, seed=1), 0, 2)
    c = epochs(train_loader(list(range(10)), 5, seed=2), 0, 2)
    assert a == b and a != c and a[:2] != a[2:]


def test_drawing_datasets_refuse_workers_and_round_trip_their_counters():
    pairs = ContrastivePairs(["q0", "q1"], {"q0": "a", "q1": "b"}, {"q0": ["d0"], "q1": ["d1"]},
                             {"q0": ["d1", "d2", "d3"], "q1": ["d0", "d2", "d3"]},
                             {f"d{i}": f"text {i}" for i in range(4)}, num_negatives=1)
    crops = CropPairs(["d0", "d1"], ["one two three four", "five six seven eight"], 0.1, 0.5, 0.0)
    for ds in (pairs, crops):
        with pytest.raises(ValueError, match="num_workers 0"):
            train_loader(ds, 1, seed=0, num_workers=2)
        ds[1], ds[1]
        copy = type(ds).__new__(type(ds))
        copy.__dict__.update(ds.__dict__, draws=[0, 0])
        copy.load_state_dict(ds.state_dict())
        assert copy.draws == [0, 2] and copy[1] == ds[1]
        with pytest.raises(ValueError, match="same training data"):
            copy.load_state_dict({"draws": torch.tensor([1])})


# -- DPR and Contriever --------------------------------------------------------------------------------------
def _dpr_args(tiny_bert_dir, tiny_beir_dir, tmp_path):
    # 6 training queries, batches of 2: 3 steps an epoch; BM25 windows of 4 negatives, 1 drawn per fetch
    return ["--config", "configs/dpr_scifact.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.encoder.passage_max_length", "16",
            "--model.init_args.encoder.query_max_length", "16", "--model.init_args.encoder.precision", "fp32",
            "--model.init_args.encoder.dropout", "true",  # so the RNG state matters
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "2",
            "--data.init_args.num_negatives", "1", "--data.init_args.negatives_depth", "4",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]  # max_epochs as shipped (3): the schedule counts epochs


def _contriever_args(tiny_bert_dir, tiny_beir_dir, tmp_path):
    # 12 documents, batches of 4: 3 steps an epoch; crops drawn per fetch; MoCo queue of 8
    return ["--config", "configs/contriever_scifact.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.encoder.passage_max_length", "16",
            "--model.init_args.encoder.query_max_length", "16", "--model.init_args.negatives.queue_size", "8",
            "--model.init_args.encoder.precision", "fp32", "--model.init_args.encoder.dropout", "true",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "4",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "2"]  # shipped: 1, too short for 5 steps


@pytest.mark.parametrize("stop", [4, 3], ids=["mid_epoch", "epoch_boundary"])
@pytest.mark.parametrize("method", ["dpr", "dpr_lora", "contriever"])
def test_contrastive_resume_equals_uninterrupted(method, stop, tiny_bert_dir, tiny_beir_dir, tmp_path):
    """5 steps in one run == ``stop`` steps, a checkpoint, a stop, and the rest resumed, under the shipped
    config's epoch-based schedule (warm-up 0.1 of the steps Lightning estimates from ``max_epochs``): counting
    those steps must not build the training loader before the checkpoint's loader state is restored."""
    args = (_contriever_args if method == "contriever" else _dpr_args)(tiny_bert_dir, tiny_beir_dir, tmp_path)
    if method == "dpr_lora":
        args[1] = "configs/dpr_lora_scifact.yaml"
    full, resumed = full_and_resumed(args, total=5, stop=stop, tmp_path=tmp_path)
    assert_same_weights(full, resumed)
    assert full.datamodule.train_dataset.draws == resumed.datamodule.train_dataset.draws
