"""Files and folders that appear under their final name only once complete, on any filesystem.

A file is written beside its final name (``.<name>.tmp-<host>-<pid>``, same folder, so the same filesystem),
flushed and fsync'ed, then renamed over the final name (``os.replace``: atomic on POSIX), and the folder is
fsync'ed: an interruption at any byte leaves the previous file whole, and a full disk fails the write of the
temporary file, not the final one. Writing in ``$TMPDIR`` and moving would copy across filesystems (a cluster's
scratch, NFS) into the final name, byte by byte. A temporary file left by a killed process is removed by the
next write into that folder from the same host.

An export folder is written as ``.<name>.partial-<host>-<pid>`` holding the marker ``RAGKIT_EXPORT_INCOMPLETE``
and renamed to its final name once every file is written and synced; the marker is removed just before and
``ragkit_export.json`` written. Our loaders (training.models.from_pretrained) refuse a folder that holds the
incomplete marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

INCOMPLETE = "RAGKIT_EXPORT_INCOMPLETE"
COMPLETE = "ragkit_export.json"


def _tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def fsync_dir(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale(folder: Path) -> None:
    """Removes temporaries (``.*.tmp-<host>-<pid>``, ``.*.partial-<host>-<pid>``) of dead processes of this host."""
    host = socket.gethostname()
    for kind in ("tmp", "partial"):
        for p in folder.glob(f".*.{kind}-{host}-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def default_file_mode() -> int:
    """0666 less the process umask (what ``open`` gives a new file): 0644 under the usual umask 022."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator:
    """A binary file object; on a clean exit its content replaces ``path`` atomically (see the module)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    tmp = path.parent / f".{path.name}.tmp-{_tag()}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _sync_tree(folder: Path, mode: int) -> None:
    """fsync every file under ``folder`` and give it ``mode`` (transformers writes safetensors with 0600)."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            p.chmod(mode)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)


def free_name(target: Path) -> Path:
    """``target``, or ``target-1``, ``target-2``... if it exists: an export never replaces another run's."""
    n, free = 0, target
    while free.exists():
        n += 1
        free = target.with_name(f"{target.name}-{n}")
    return free


def export_atomically(target: str | Path, write: Callable[[Path], None], writer: bool = True) -> Path:
    """Calls ``write(folder)`` (on every rank of a distributed run; ``writer`` on the one that writes files)
    with a temporary folder beside ``target``, then (writer) renames it to ``target`` or, if that exists, the
    first free ``target-N``; returns the final folder. On an exception the temporary folder is removed."""
    target = Path(target)
    partial = target.parent / f".{target.name}.partial-{_tag()}"
    if writer:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent)
        partial.mkdir()
        (partial / INCOMPLETE).write_text("an export interrupted before it was complete: do not use\n")
    try:
        write(partial)
    except BaseException:
        if writer:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if not writer:
        return target
    (partial / INCOMPLETE).unlink()
    (partial / COMPLETE).write_text(json.dumps({"complete": True, "files": sorted(
        str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())}, indent=1) + "\n")
    _sync_tree(partial, default_file_mode())
    final = free_name(target)
    os.rename(partial, final)
    fsync_dir(final.parent)
    return final


def refuse_incomplete(path: str | Path) -> None:
    """Raises if ``path`` (or a folder above it, up to two levels: query/ and passage/ encoders) is an export
    interrupted before it was complete."""
    path = Path(path)
    for folder in (path, path.parent, path.parent.parent):
        if (folder / INCOMPLETE).exists():
            raise OSError(f"{path}: an export that was interrupted before it was complete ({folder / INCOMPLETE} "
                          "is there); export the model again (python train.py test ... or the run's checkpoint)")
