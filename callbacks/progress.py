"""Progress lines for log files. Lightning's progress bar redraws one line with carriage returns (rich prints
nothing at all off a terminal), so a run whose output goes to a file (a batch job, ``make demo > log``)
shows nothing for 20 minutes of corpus encoding. This callback writes, when stderr is not a terminal, a
line every ``every_s`` seconds with the count, rate and ETA of training steps and of every
validation/test dataloader (the corpus, then the queries, for retrievers)."""

from __future__ import annotations

import lightning as L

from training.progress import ProgressLog, default_interval, is_terminal


class LogProgress(L.Callback):
    """Args:
        every_s: seconds between lines (default ``$RAGKIT_PROGRESS_EVERY`` or 30).
        force: write lines even on a terminal (the progress bar is there already, so off by default).
    """

    def __init__(self, every_s: float | None = None, force: bool = False):
        self.every_s = default_interval() if every_s is None else every_s
        self.force = force
        self._train: ProgressLog | None = None
        self._seen_step = 0
        self._eval: dict[int, ProgressLog] = {}

    def _active(self, trainer) -> bool:
        return trainer.is_global_zero and (self.force or not is_terminal())

    # -- training ---------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        if self._active(trainer):
            total = trainer.estimated_stepping_batches
            total = int(total) if total != float("inf") else None
            self._seen_step = trainer.global_step
            self._train = ProgressLog("train", total, "step", self.every_s)
            self._train.done = trainer.global_step  # a resumed run counts from where it stopped

    def _train_extra(self, trainer) -> str:
        loss = trainer.callback_metrics.get("train/loss", trainer.callback_metrics.get("train_loss"))
        extra = f", epoch {trainer.current_epoch}"
        return extra + (f", train/loss {float(loss):.4f}" if loss is not None else "")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._train is not None:
            steps = trainer.global_step - self._seen_step
            self._seen_step = trainer.global_step
            self._train.update(steps, self._train_extra(trainer))

    def on_train_end(self, trainer, pl_module):
        if self._train is not None:
            self._train.close(self._train_extra(trainer))
            self._train = None

    # -- validation / test ------------------------------------------------------------------------------------
    def _eval_start(self, trainer, stage: str, totals, dataloader_idx: int):
        """The clock of a dataloader starts at its first batch, so its rate counts that batch too."""
        if trainer.sanity_checking or not self._active(trainer) or dataloader_idx in self._eval:
            return
        total = totals[dataloader_idx] if dataloader_idx < len(totals) else None
        total = int(total) if total not in (None, float("inf")) else None
        self._eval[dataloader_idx] = ProgressLog(f"{stage} dataloader {dataloader_idx}", total, "batch", self.every_s)

    def _eval_batch(self, dataloader_idx: int):
        if dataloader_idx in self._eval:
            self._eval[dataloader_idx].update()

    def _eval_end(self, trainer):
        for log in self._eval.values():
            log.close()
        self._eval = {}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._eval_start(trainer, "validate", trainer.num_val_batches, dataloader_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_batch(dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._eval_end(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._eval_start(trainer, "test", trainer.num_test_batches, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_batch(dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._eval_end(trainer)
