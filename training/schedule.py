"""The number of optimizer steps a learning-rate schedule spans, counted without breaking exact resume."""

from __future__ import annotations


def planned_steps(trainer) -> int:
    """``trainer.estimated_stepping_batches``: ``max_steps``, or ceil(batches per epoch / accumulation) x
    ``max_epochs`` (the smaller of the two when both are set).

    With ``max_epochs`` set, Lightning builds the training loader to count its batches, and keeps it. Called
    from ``configure_optimizers`` that happens before Lightning restores a checkpoint's loop state, and the
    loader it keeps never gets the saved loader state: a resumed run re-reads the interrupted epoch from its
    start, skips its end, and restarts the negatives' / crops' draw counters (datamodules.resumable). The
    loader built for counting is dropped here (nothing was fetched from it), so fit builds it again once the
    state is restored."""
    loop = trainer.fit_loop
    built_here = loop._combined_loader is None
    total = trainer.estimated_stepping_batches
    if built_here and loop._combined_loader is not None:
        if loop._data_fetcher is not None:
            loop._data_fetcher.teardown()
            loop._data_fetcher = None
        loop._combined_loader = None
    return int(total) if total != float("inf") else total
