"""Checks of a checkpoint a run is asked to read (``--ckpt_path``, SCoRe's ``init_from``), before anything is
built: a missing, empty, truncated or folder path is an error naming the file and the option, not a traceback
from deep inside ``torch.load`` after the model was loaded; and resuming says what it does with the model's
options: the config (files and command line) is used, every option that differs from the checkpoint's is
named with both values, and a checkpoint of another method is refused.

A Lightning checkpoint is ``torch.save``'s zip archive (its central directory is at the end, so a truncated
file is found without reading it whole), or, from a sharded (FSDP2 / ModelParallelStrategy) run, a folder
holding ``meta.pt`` (everything but the tensors, hyperparameters included) and ``.metadata`` (torch's
distributed checkpoint).
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

SHARDED_META = "meta.pt"          # lightning.fabric.utilities.load._METADATA_FILENAME
SHARDED_INDEX = ".metadata"       # torch.distributed.checkpoint's index of the shards
# ckpt_path values Lightning resolves itself (no file to check)
LIGHTNING_NAMES = ("last", "best", "hpc", "registry")


class CheckpointError(ValueError):
    """A checkpoint path that cannot be read; the message names the option and the file."""


def check_checkpoint_path(path: str | Path, option: str, sharded_ok: bool = True) -> Path:
    """``path`` as a checkpoint someone can read, or a :class:`CheckpointError` naming ``option`` and the
    file: not found, an empty file, a truncated or non-checkpoint file, a folder that is not a sharded
    checkpoint (or any folder when ``sharded_ok`` is False)."""
    path = Path(path).expanduser()
    where = f"{option} {path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no such file")
    if path.is_dir():
        if not sharded_ok:
            raise CheckpointError(f"{where}: is a folder, not a checkpoint file")
        missing = [n for n in (SHARDED_META, SHARDED_INDEX) if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{where}: is a folder but not a sharded checkpoint (no {' nor '.join(missing)} "
                                  "in it); give the .ckpt file or the sharded checkpoint's folder")
        return path
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{where}: the file is empty (0 bytes); was the run killed while writing it?")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic[:1] != b"\x80":  # the pre-1.6 pickle format has no zip directory to check
            raise CheckpointError(f"{where}: not a complete checkpoint ({size} bytes, no zip end record: truncated, "
                                  "or not a file torch.save wrote)")
    return path


def read_hyperparameters(path: Path, option: str) -> dict:
    """The ``hyper_parameters`` a checkpoint (file or sharded folder) was saved with ({} when none)."""
    import torch

    source = path / SHARDED_META if path.is_dir() else path
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unreadable file is the same error for the user)
        raise CheckpointError(f"{option} {source}: cannot be read as a checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{option} {source}: not a Lightning checkpoint (holds a {type(checkpoint).__name__})")
    return dict(checkpoint.get("hyper_parameters") or {})


def import_class(class_path: str):
    """The class ``class_path`` names, or None when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``lightning_modules.SCoRe`` and ``lightning_modules.score.SCoRe``)."""
    if a == b:
        return True
    ca, cb = import_class(a), import_class(b)
    return ca is not None and ca is cb


def _plain(value):
    """Values as YAML gives them: tuples as lists, Namespaces and mappings as dicts (for comparison)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def option_differences(used: dict, saved: dict) -> list[tuple[str, object, object]]:
    """``(option, checkpoint's value, value used)`` for each option of ``saved`` (the checkpoint's
    hyperparameters) that ``used`` (the config's init_args) sets to another value; the checkpoint's private
    keys (``_class_path``, ``_instantiator``) are not options."""
    out = []
    for key, value in saved.items():
        if key.startswith("_") or key not in used:
            continue
        if _plain(used[key]) != _plain(value):
            out.append((key, _plain(value), _plain(used[key])))
    return out


def reconcile(model_config: dict, saved: dict, ckpt_path: str | Path) -> list[str]:
    """Lines saying how a run's model options relate to the checkpoint it starts from: raises a
    :class:`CheckpointError` when the checkpoint is of another class than ``model_config["class_path"]``;
    otherwise one line per option the config sets differently from the checkpoint (both values; the
    config's is used)."""
    saved_class = saved.get("_class_path")
    class_path = model_config.get("class_path")
    if saved_class and class_path and not same_class(saved_class, class_path):
        raise CheckpointError(f"--ckpt_path {ckpt_path}: a checkpoint of {saved_class}, but the config's model is "
                              f"{class_path}; give a checkpoint of this method (or the config of that one)")
    return [f"model.init_args.{key}: checkpoint {old!r}, config {new!r} -> using {new!r}"
            for key, old, new in option_differences(dict(model_config.get("init_args") or {}), saved)]
