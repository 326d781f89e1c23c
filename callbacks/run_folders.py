"""Run folders: a failed run that trained nothing leaves no version folder behind; a finished fit points
``<save_dir>/<name>/latest`` at its own version folder (SCoRe Stage II configs start from
``runs/<stage1>/latest/checkpoints/best.ckpt``; every run keeps its own ``version_N``, none overwrites another)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L

# what any run writes at its start, before it has produced anything
_START_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.")


def _version_dir(trainer) -> Path | None:
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(folder) if folder and Path(folder).is_dir() else None


def point_latest(version: Path) -> None:
    """``version.parent / "latest"`` -> ``version`` (relative), replaced atomically: a symlink made under a
    temporary name and renamed over the old one, so a reader sees the old or the new run, never none."""
    link, tmp = version.parent / "latest", version.parent / f".latest.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name, target_is_directory=True)
    os.replace(tmp, link)


class RunFolders(L.Callback):
    def on_fit_end(self, trainer, pl_module) -> None:
        version = _version_dir(trainer)
        if trainer.is_global_zero and version is not None and trainer.global_step > 0:
            point_latest(version)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        version = _version_dir(trainer)
        if not trainer.is_global_zero or version is None or trainer.global_step > 0:
            return
        files = [p for p in version.rglob("*") if p.is_file()]
        if all(p.parent == version and p.name.startswith(_START_FILES) for p in files):
            shutil.rmtree(version, ignore_errors=True)
