"""A small pool of limited worker processes (``tasks/math_worker.py``) for the symbolic checks of the grader.

Each worker is a fresh interpreter (``python -I -B``: no site of the user, no environment variables, no
memory of the trainer) with an empty environment, cwd ``/``, its own session, stdin/stdout pipes and stderr
on /dev/null. It limits itself before reading any request (see ``tasks.math_worker``): memory (``RLIMIT_AS``),
CPU per request, no file writes, and as root its own network namespace and the uid ``base_uid + index``
(one uid per worker, a range apart from the code sandbox's ``64000 + i``).

A request holds one worker for at most its ``timeout`` (waiting for a free one included); a worker that does
not answer in time is killed (SIGKILL to its process group) and started again in the background, so a slow
item costs only its own time and never holds a lock that other items wait on. Items run in parallel up to the
pool's size.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
WORKER = str(Path(__file__).resolve().with_name("math_worker.py"))
_MAX_REPLY = 4096


class _Worker:
    def __init__(self, index: int, config: dict):
        self.index, self.config, self.proc, self.info = index, config, None, None
        self.served = 0

    def start(self, deadline: float) -> bool:
        config = {**self.config, "uid": self.config["base_uid"] + self.index}
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", WORKER, json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                     start_new_session=True)
        reply = self._read(deadline)
        if not reply or not reply.get("ready"):
            self.kill()
            return False
        self.info, self.served = reply, 0
        return True

    def _read(self, deadline: float) -> dict | None:
        fd, buf = self.proc.stdout.fileno(), b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, _MAX_REPLY)
            if not chunk or len(buf) + len(chunk) > _MAX_REPLY:
                return None
            buf += chunk
        try:
            reply = json.loads(buf)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def ask(self, request: dict, timeout: float) -> dict | None:
        """The worker's reply, or None when it timed out or died (it is then killed)."""
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        reply = self._read(time.monotonic() + timeout)
        if reply is None:
            self.kill()
        else:
            self.served += 1
        return reply

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None


class MathPool:
    """``size`` workers; ``equal(a, b, mode, timeout)`` runs one check on a free worker.

    memory_mb: RLIMIT_AS of a worker; cpu_s: a worker's CPU-time limit over its life (it is restarted after
    ``recycle`` requests); start_timeout: seconds a worker may take to start (import sympy) before a check
    counts as failed; base_uid: worker i runs as uid/gid ``base_uid + i`` when the pool runs as root."""

    def __init__(self, size: int = 2, memory_mb: int = 1024, cpu_s: int = 3600, recycle: int = 2000,
                 start_timeout: float = 120.0, base_uid: int = 63000):
        config = {"memory_mb": memory_mb, "cpu_s": cpu_s, "base_uid": base_uid}
        self.size, self.recycle, self.start_timeout, self._pid = size, recycle, start_timeout, os.getpid()
        self._workers = [_Worker(i, config) for i in range(size)]
        self._free: queue.Queue[_Worker] = queue.Queue()
        for w in self._workers:
            self._free.put(w)
        self.stats = {"checks": 0, "timeouts": 0, "restarts": 0, "start_failures": 0, "errors": 0}
        self.error_types: collections.Counter = collections.Counter()  # what sympy raised in the workers
        self._stats_lock = threading.Lock()
        self._closed = False

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _start(self, w: _Worker) -> bool:
        self._count("restarts")
        if w.start(time.monotonic() + self.start_timeout):
            return True
        self._count("start_failures")
        log.error("math grader: symbolic worker %d did not start (it exited, or sent no 'ready' within %.0f s); "
                  "symbolic checks count as not equal until one does", w.index, self.start_timeout)
        return False

    def _restart_then_free(self, w: _Worker) -> None:
        """A worker killed on a timeout starts again in the background, so its start (about 2 s) is not paid by
        the next check; until it is ready, callers wait on the other workers (within their own time)."""
        if not self._closed:
            self._start(w)
        self._release(w)

    def _release(self, w: _Worker) -> None:
        """Back to the free queue; killed first if the pool was closed meanwhile (a worker in use by another
        thread is never killed under it: its pipes' file descriptors could be reused)."""
        if self._closed:
            w.kill()
        self._free.put(w)

    def equal(self, a: list, b: list, mode: list, timeout: float) -> bool | None:
        """True/False from a worker; None when no answer came within ``timeout`` (waiting for a free worker
        included; the first start of a worker is not) or no worker started."""
        if self._closed:
            return None
        start = time.monotonic()
        try:
            w = self._free.get(timeout=max(timeout, 0.001))
        except queue.Empty:  # more callers than workers, all busy for longer than this check may take
            self._count("timeouts")
            return None
        timeout -= time.monotonic() - start
        killed = False
        try:
            if w.alive() and w.served >= self.recycle:
                w.kill()
            if not w.alive() and not self._start(w):
                return None
            self._count("checks")
            reply = w.ask({"a": a, "b": b, "mode": mode, "cpu_s": max(1, int(timeout) + 1)}, timeout)
            if reply is None:
                self._count("timeouts")
                killed = True
                return None
            if "error" in reply:
                self._count("errors")
                with self._stats_lock:
                    self.error_types[str(reply["error"])[:200]] += 1
            return bool(reply.get("eq") is True)
        finally:
            if killed:
                threading.Thread(target=self._restart_then_free, args=(w,), daemon=True).start()
            else:
                self._release(w)

    def isolation(self) -> list[dict | None]:
        """What each started worker reported: {"netns": bool, "uid": int} (None: not started yet)."""
        return [w.info for w in self._workers]

    def close(self) -> None:
        if os.getpid() != self._pid:  # a forked child's copy: the workers are the parent's
            return
        self._closed = True
        idle = []
        while True:  # the idle ones now; those in use are killed when they come back (``_release``)
            try:
                idle.append(self._free.get_nowait())
            except queue.Empty:
                break
        for w in idle:
            self._release(w)


_POOL: MathPool | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def default_pool() -> MathPool:
    """The process-wide pool (size from ``RAGKIT_MATH_WORKERS``, default 2), closed at exit."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():  # a forked child starts its own (the pipes are the parent's)
            _POOL, _POOL_PID = MathPool(size=max(1, int(os.environ.get("RAGKIT_MATH_WORKERS", "2")))), os.getpid()
            atexit.register(_POOL.close)
        return _POOL
