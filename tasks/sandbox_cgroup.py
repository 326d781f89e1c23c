"""One cgroup per sandbox worker: memory, process count and CPU of a job's whole process tree.

A worker runs one job at a time, and every process of a job descends from the worker's zygote, which sits in
this cgroup; so the limits bind the job's tree however it forks (three children of 700 MB each count as
2.1 GB against one ``memory_mb``). cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` lists memory, pids and
cpu) is preferred; else the v1 hierarchies ``/sys/fs/cgroup/{memory,pids,cpu,cpuacct}``. The worker opens the
directories before it enters its jail and keeps the descriptors, so it can read and write them afterwards
while nothing inside the jail can see them. ``create`` returns None when neither is writable (then the
fallback of ``docs/security.md`` holds: per-process RLIMIT_AS, per-uid RLIMIT_NPROC, a wall time).
"""

from __future__ import annotations

import os
import time

ROOT = "/sys/fs/cgroup"
PARENT = "ragkit-sandbox"
SLACK_MB = 64  # the zygote (a preloaded interpreter) lives in the cgroup too
CPU_PERIOD_US = 100_000


def _v2() -> bool:
    try:
        with open(f"{ROOT}/cgroup.controllers") as f:
            return {"memory", "pids", "cpu"} <= set(f.read().split())
    except OSError:
        return False


def paths(name: str) -> list[str]:
    """The directories of cgroup ``name`` (v2: one; v1: one per controller)."""
    if _v2():
        return [f"{ROOT}/{PARENT}/{name}"]
    return [f"{ROOT}/{c}/{PARENT}/{name}" for c in ("memory", "pids", "cpu", "cpuacct")]


def _write(dir_fd: int, name: str, value) -> None:
    fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)


class JobCgroup:
    """Limits: ``memory_mb`` (+ the zygote's slack, no swap) and ``nproc`` (+ the zygote) for the tree, at
    most ``cpus`` CPUs at any time (CFS quota); ``cpu_ns`` reads the tree's accumulated CPU time."""

    def __init__(self, name: str, dirs: dict[str, int], v2: bool):
        self.name, self.dirs, self.v2 = name, dirs, v2
        self.kind = "v2" if v2 else "v1"

    @classmethod
    def create(cls, name: str, memory_mb: int, nproc: int, cpus: float = 1.0) -> "JobCgroup | None":
        v2 = _v2()
        try:
            if v2:
                _enable_v2_controllers()
            dirs = {}
            for path in paths(name):
                os.makedirs(path, exist_ok=True)
                dirs[path.split("/")[-3] if not v2 else "all"] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            cg = cls(name, dirs, v2)
            cg._limit(memory_mb, nproc, cpus)
            return cg
        except OSError:
            return None

    def _fd(self, controller: str) -> int:
        return self.dirs["all" if self.v2 else controller]

    def _limit(self, memory_mb: int, nproc: int, cpus: float) -> None:
        mem = (memory_mb + SLACK_MB) << 20
        quota = int(CPU_PERIOD_US * cpus)
        if self.v2:
            _write(self._fd("memory"), "memory.max", mem)
            _write(self._fd("memory"), "memory.swap.max", 0)
            _write(self._fd("pids"), "pids.max", nproc + 1)
            _write(self._fd("cpu"), "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        _write(self._fd("memory"), "memory.limit_in_bytes", mem)
        try:
            _write(self._fd("memory"), "memory.memsw.limit_in_bytes", mem)  # no escape into swap
        except OSError:
            pass  # swap accounting off: the kernel has no memsw files
        _write(self._fd("pids"), "pids.max", nproc + 1)
        _write(self._fd("cpu"), "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(self._fd("cpu"), "cpu.cfs_quota_us", quota)

    def add(self, pid: int) -> None:
        for fd in set(self.dirs.values()):
            _write(fd, "cgroup.procs", pid)

    def cpu_ns(self) -> int:
        if self.v2:
            stat = dict(line.split() for line in _read(self._fd("cpu"), "cpu.stat").splitlines())
            return int(stat["usage_usec"]) * 1000
        return int(_read(self._fd("cpuacct"), "cpuacct.usage"))

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in _read(self._fd("memory"), name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


def _enable_v2_controllers() -> None:
    parent = f"{ROOT}/{PARENT}"
    os.makedirs(parent, exist_ok=True)
    for d in (ROOT, parent):
        with open(f"{d}/cgroup.subtree_control", "w") as f:
            f.write("+memory +pids +cpu")


def remove(name: str, timeout: float = 2.0) -> None:
    """Remove cgroup ``name`` once its processes are gone (called by the pool after a worker died)."""
    deadline = time.monotonic() + timeout
    for path in paths(name):
        while os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
