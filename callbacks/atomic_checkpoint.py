"""Checkpoints written atomically on any filesystem (training.atomic_files): Lightning's own save writes into a
temporary file in ``$TMPDIR`` and moves it; across filesystems the move copies into the final name, so a kill
or a full disk leaves a truncated ``last.ckpt`` (the previous one already gone) and an orphan in ``$TMPDIR``."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from fsspec.implementations.local import LocalFileSystem

from training.atomic_files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`training.atomic_files.atomic_file` (remote
    URLs: Lightning's fsspec transaction, which uploads whole objects)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_file(path) as f:
                torch.save(checkpoint, f)
        except RuntimeError as err:
            # torch's zip writer reports a failed write (a full disk) as "unexpected pos ..."
            cause = err.__context__ if isinstance(err.__context__, OSError) else None
            if cause is None:
                raise
            raise OSError(cause.errno, f"{path}: checkpoint not written ({cause.strerror}); "
                                       "the previous file of that name is unchanged") from err


def install(trainer) -> None:
    """Makes the trainer's strategy save checkpoints atomically, unless a custom CheckpointIO was configured."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
