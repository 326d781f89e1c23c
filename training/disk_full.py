"""A full disk, said in one line that names the file: ``OSError: [Errno 28] No space left on device`` from a
``write`` carries no file name (e.g. a checkpoint written through a temporary file in ``$TMPDIR``), so the file
is found in the traceback (the open file object the failing frame was writing), and the free space of its
folder and of ``$TMPDIR`` is given."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

FULL = (errno.ENOSPC, errno.EDQUOT)


def _file_name(obj) -> str | None:
    """The path of a file object open for writing (not ``<stdout>``, nor a descriptor number)."""
    name = getattr(obj, "name", None)
    writable = getattr(obj, "writable", None)
    if not isinstance(name, str) or name.startswith("<") or not callable(writable):
        return None
    try:
        return name if writable() else None
    except ValueError:  # closed
        return name


def written_file(tb: TracebackType | None) -> str | None:
    """The file the innermost frame of ``tb`` that holds an open-for-writing file object was writing (a local,
    or an attribute of ``self``, as fsspec's ``LocalFileOpener.f``)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        values = list(frame.f_locals.values())
        owner = frame.f_locals.get("self")
        values += list(getattr(owner, "__dict__", {}).values())
        for value in values:
            name = _file_name(value)
            if name is not None:
                return name
    return None


def _free(path: str | Path) -> str:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def describe_disk_full(err: BaseException) -> str | None:
    """One line for a full disk or quota (``None`` for any other error): the file, its folder's free space
    and ``$TMPDIR``'s."""
    if not isinstance(err, OSError) or err.errno not in FULL:
        return None
    file = err.filename or written_file(err.__traceback__)
    tmp = tempfile.gettempdir()
    where = f" writing {file} ({_free(Path(file).parent)})" if file else ""
    return (f"{err.strerror or 'no space left on device'}{where}; $TMPDIR is {tmp} ({_free(tmp)}): free some space "
            "or point TMPDIR / the log folder at a disk with room")
