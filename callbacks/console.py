"""What a person reads on the console during a run: a progress bar that counts steps when epochs are unbounded,
and one results table per test / validate run.

- Lightning's rich progress bar writes ``Epoch 0/-2`` when a run is bounded by ``max_steps`` alone (every RL
  config): it prints ``max_epochs - 1`` and ``max_epochs`` is -1 there. :class:`StepProgressBar` writes
  ``Epoch 0 · step 12/40`` instead.
- Metrics logged at the end of an evaluation epoch belong to no dataloader, so Lightning copies them into the
  column of every dataloader: a retriever's test (dataloader 0 the corpus, 1 the queries) printed the same
  nDCG twice. :func:`one_results_table` collapses identical columns into one.

``readable_console(trainer)`` installs both; ``train.py`` calls it on every trainer it builds.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar; with unbounded epochs (``max_epochs`` -1 or None) its description counts optimizer
    steps against ``max_steps`` rather than epochs against ``max_epochs - 1``."""

    def _unbounded_epochs(self) -> bool:
        return self.trainer.max_epochs is None or self.trainer.max_epochs < 0

    def _step_description(self, epoch: int) -> str:
        trainer = self.trainer
        limit = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        return f"Epoch {epoch} · step {trainer.global_step}{limit}"

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._unbounded_epochs():
            return super()._get_train_description(current_epoch)
        return self._step_description(current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._unbounded_epochs() and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._step_description(trainer.current_epoch))


def collapse_identical(results: list[dict]) -> list[dict]:
    """One column instead of several when every dataloader's results are the same (epoch-end metrics only)."""
    if len(results) > 1 and all(_same(r, results[0]) for r in results[1:]):
        return results[:1]
    return results


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or float(a[k]) == float(b[k]) for k in a)


def one_results_table(loop) -> None:
    """Make an evaluation loop print identical dataloader columns once. Lightning's ``_print_results`` is a
    static method called as ``self._print_results``, so an instance attribute takes its place."""
    printer = type(loop)._print_results
    loop._print_results = lambda results, stage: printer(collapse_identical(results), stage)


def readable_console(trainer) -> None:
    """Swap Lightning's default rich bar (exactly that class: a user's own bar is kept) for
    :class:`StepProgressBar` with the same settings, and give the test and validate loops one results table."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar(refresh_rate=callback.refresh_rate, leave=callback._leave,
                                                   theme=callback.theme, console_kwargs=callback._console_kwargs)
    for loop in (trainer.test_loop, trainer.validate_loop):
        one_results_table(loop)
