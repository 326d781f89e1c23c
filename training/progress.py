"""Progress that reaches log files: on a terminal a tqdm bar, elsewhere (a batch job, ``make demo > log``)
a line every ``$RAGKIT_PROGRESS_EVERY`` seconds (default 30) with the count, the rate and the ETA. A bar
redrawn with carriage returns prints nothing useful into a file, so a 20-minute corpus encoding would
otherwise be silent there."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")
EVERY_ENV = "RAGKIT_PROGRESS_EVERY"


def default_interval() -> float:
    value = os.environ.get(EVERY_ENV, "30")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{EVERY_ENV}={value!r}: expected a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{EVERY_ENV}={value!r}: expected a number of seconds >= 0")
    return seconds


def is_terminal(stream: IO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def format_duration(seconds: float) -> str:
    """``75 -> '1m15s'``, ``3700 -> '1h01m'``, ``9 -> '9s'``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLog:
    """Counts work done and writes ``'<desc>: 120/303 (40%), 2.10 batch/s, ETA 1m27s'`` at most every
    ``every_s`` seconds (and once at the end with :meth:`close`). ``write`` receives each line."""

    def __init__(self, desc: str, total: int | None, unit: str = "it", every_s: float | None = None,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit = desc, total, unit
        self.every_s = default_interval() if every_s is None else every_s
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self._written = -1  # ``done`` at the last line written

    def line(self, extra: str = "") -> str:
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else f"{self.done}"
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {format_duration((self.total - self.done) / rate)}"
        return f"{self.desc}: {count}, {rate:.2f} {self.unit}/s{eta}, elapsed {format_duration(elapsed)}{extra}"

    def update(self, n: int = 1, extra: str = "") -> str | None:
        """Count ``n`` more; write (and return) a line if ``every_s`` has passed since the last one."""
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last, self._written = now, self.done
            text = self.line(extra)
            self.write(text)
            return text
        return None

    def close(self, extra: str = "") -> str | None:
        """The final line (unless the last line written already says it all)."""
        if self._written == self.done:
            return None
        self._written = self.done
        text = self.line(extra)
        self.write(text)
        return text


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, every_s: float | None = None) -> Iterator[T]:
    """``iterable`` with progress on stderr: a tqdm bar on a terminal, :class:`ProgressLog` lines elsewhere."""
    if disable:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if is_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit)
        return
    log = ProgressLog(desc, total, unit, every_s)
    for item in iterable:
        yield item
        log.update()
    log.close()
