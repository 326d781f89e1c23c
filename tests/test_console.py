"""What a person reads: the start-up noise silenced (training/quiet.py), a progress bar that counts steps when a run
is bounded by max_steps alone, one test table when every dataloader has the same metrics (callbacks/console.py)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from callbacks.console import StepProgressBar, collapse_identical, readable_console
from training.quiet import MANUAL_OPTIMISATION_CHECKPOINT, quiet_warnings

LIGHTNING_WARNING = (MANUAL_OPTIMISATION_CHECKPOINT + ", but no pre-optimization state was saved. The checkpoint will "
                     "contain the model state AFTER optimization. ...")


def test_manual_optimisation_checkpoint_warning_is_silenced_and_no_other():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_warnings()
        warnings.warn(LIGHTNING_WARNING, UserWarning)
        warnings.warn("Using ModelCheckpoint with a monitor that was never logged", UserWarning)
    assert [str(w.message) for w in seen] == ["Using ModelCheckpoint with a monitor that was never logged"]


def _bar(max_epochs, max_steps, global_step=3):
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=global_step)
    return bar


def test_progress_bar_counts_steps_when_epochs_are_unbounded():
    assert _bar(-1, 40)._get_train_description(0) == "Epoch 0 · step 3/40"
    assert _bar(None, -1)._get_train_description(2) == "Epoch 2 · step 3"
    # bounded epochs keep Lightning's "Epoch e/max_epochs-1" (padded to the validation description's width)
    assert _bar(3, -1)._get_train_description(1).strip() == "Epoch 1/2"


def test_collapse_identical_keeps_distinct_columns():
    ndcg = torch.tensor(0.5)
    assert collapse_identical([{"test/ndcg@10": ndcg}, {"test/ndcg@10": ndcg}]) == [{"test/ndcg@10": ndcg}]
    assert len(collapse_identical([{"a": torch.tensor(0.5)}, {"a": torch.tensor(0.25)}])) == 2
    assert len(collapse_identical([{"a": torch.tensor(0.5)}, {"b": torch.tensor(0.5)}])) == 2


def test_a_two_dataloader_test_prints_one_column_and_the_rl_bar_shows_steps(tmp_path, capsys):
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
    from torch.utils.data import DataLoader

    class TwoLoaders(BoringModel):
        """Like a retriever's test: two dataloaders (corpus, queries), metrics logged at the epoch's end."""

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            return None

        def on_test_epoch_end(self):
            self.log("test/ndcg@10", 0.75)

        def test_dataloader(self):
            return [DataLoader(RandomDataset(32, 4), batch_size=2), DataLoader(RandomDataset(32, 4), batch_size=2)]

    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[RichProgressBar()])
    readable_console(trainer)
    bar = trainer.progress_bar_callback
    assert type(bar) is StepProgressBar
    trainer.fit(TwoLoaders())
    assert bar.progress.tasks[bar.train_progress_bar_id].description == "Epoch 0 · step 2/2"
    capsys.readouterr()
    trainer.test(TwoLoaders())
    out = capsys.readouterr().out
    assert "test/ndcg@10" in out and "DataLoader 0" in out and "DataLoader 1" not in out
