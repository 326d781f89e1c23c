"""The zygote and the untrusted program of the code sandbox.

The **zygote** is a fresh interpreter (``python -I -S``, exec'd by the job loop when the worker starts) that
never receives a job: it only hears "spawn a program process for uid U in directory D" and "clean", so no
test, gold answer or checker helper is ever in its memory, nor in the memory of the processes it forks. In a
jail it is PID 1 of the worker's PID namespace: ``kill(-1)`` from it reaches every process a program left
(also ones that called ``setsid``), it reaps them all, and the kernel shields it from the programs' signals.

The **program process** (forked per job) enters a new IPC namespace (its SysV/POSIX IPC objects die with its
last process), drops to the worker's uid with rlimits, no_new_privs and the seccomp filter
(``sandbox_jail.install_filter``), then receives the program text from the job loop, runs it and answers
``get`` / ``call`` / ``getattr`` requests with plain data (``sandbox_codec``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import builtins  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402

import sandbox_codec as codec  # noqa: E402
import sandbox_jail as jail  # noqa: E402

# Imported once by the zygote so the per-job forks find them loaded: a program's ``from typing import List``
# then costs nothing instead of milliseconds of disk reads per sample.
PRELOAD = ("resource", "tempfile", "typing", "math", "re", "collections", "itertools", "functools", "heapq",
           "bisect", "string", "hashlib", "random", "operator", "copy", "fractions", "statistics", "datetime")
CONTROL_FD = 3


def main() -> None:
    import importlib

    jailed = sys.argv[1] == "jail"
    if jailed:  # PID 1 of the worker's PID namespace: its own /proc, no other process of the host in it
        jail.mount("proc", "/proc", "proc", jail.MS_NOSUID | jail.MS_NODEV | jail.MS_NOEXEC, "hidepid=2")
    _oom_score_adj("-1000")  # the OOM killer of the job's cgroup takes the program, not the zygote
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # fewer copy-on-write page faults in the forks
    ctl = socket.socket(fileno=CONTROL_FD)  # SOCK_SEQPACKET: one record per message, fds beside it
    tell({"ready": True})
    child, exited = None, True
    while True:
        if select.select([ctl], [], [], 0.005)[0]:
            msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 1)
            if not msg:
                os._exit(0)  # the job loop is gone
            req = json.loads(msg)
            if req["op"] == "spawn":
                child, exited = _spawn(fds[0], req, jailed), False
                tell({"pid": child})
            elif req["op"] == "clean":
                exited = _clean(child, exited, jailed)
                if req.get("dir"):
                    shutil.rmtree(req["dir"], ignore_errors=True)
                tell({"cleaned": True})
            for fd in fds:
                if fd >= 0 and req["op"] != "spawn":
                    os.close(fd)
        exited = _reap(child, exited)


def tell(obj) -> None:
    os.write(CONTROL_FD, json.dumps(obj).encode())


def _reap(child, exited: bool, block: bool = False) -> bool:
    """Reap every finished child (orphans of the programs land here); report the program's own exit once."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        if pid == child and not exited:
            tell({"exit": status})
            exited = True


def _clean(child, exited: bool, jailed: bool) -> bool:
    """Kill everything the program started and wait until none of it is left."""
    if jailed:
        try:
            os.kill(-1, signal.SIGKILL)  # as PID 1 of the namespace: everyone but this process
        except ProcessLookupError:
            pass
        return _reap(child, exited, block=True)
    if child is not None and not exited:
        for kill in (lambda: os.killpg(child, signal.SIGKILL), lambda: os.kill(child, signal.SIGKILL)):
            try:
                kill()
            except OSError:
                pass
        _, status = os.waitpid(child, 0)
        tell({"exit": status})
    return True


def _oom_score_adj(value: str) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:  # lowering it needs root (rlimits mode as a user)
        pass


def _spawn(sock_fd: int, req: dict, jailed: bool) -> int:
    pid = os.fork()
    if pid:
        os.close(sock_fd)
        return pid
    try:
        _program_process(sock_fd, req, jailed)
    finally:
        os._exit(70)


def _program_process(sock_fd: int, req: dict, jailed: bool) -> None:
    import resource

    limits, uid, workdir = req["limits"], req["uid"], req["dir"]
    parent = os.getppid()
    os.setsid()
    if jailed:
        jail.unshare(jail.CLONE_NEWIPC)
    _oom_score_adj("1000")
    os.dup2(sock_fd, 3)
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    os.closerange(4, 65536)
    os.chdir(workdir)
    mb = 1 << 20
    for res, value in ((resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1)),
                       (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
                       (resource.RLIMIT_FSIZE, (limits["fsize_mb"] * mb,) * 2),
                       (resource.RLIMIT_NPROC, (limits["nproc"],) * 2),
                       (resource.RLIMIT_NOFILE, (limits["nofile"],) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # A credential change clears the parent-death signal: set it after setuid, then check the zygote lives.
    jail.libc.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(71)
    jail.install_filter()
    gc.unfreeze()
    sys.modules["random"].seed()  # do not hand every sample the zygote's random state
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                       "LANG": "C.UTF-8"})
    if not jailed:
        import _socket

        class _NoNetwork:
            def __init__(self, *a, **k):
                raise PermissionError("network access is disabled in the sandbox")

        socket.socket = _socket.socket = _NoNetwork  # type: ignore[misc]
    _serve(codec.recv(3)["program"])


def _serve(program: str) -> None:
    """Run the program, then answer the job loop's requests until it says ``finish``."""
    handles: list = []

    def handle(v):
        handles.append(v)
        return {"h": len(handles) - 1}

    g = {"__name__": "__main__", "__builtins__": builtins}

    def resolve(tag, key):
        return g[key] if tag == "g" else handles[key]

    try:
        exec(compile(program, "<program>", "exec"), g)
        hello = {"loaded": True}
    except BaseException as e:  # noqa: BLE001 - SystemExit before the tests is a failed program too
        hello = {"loaded": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    codec.send(3, hello)
    if not hello["loaded"]:
        return
    while True:
        try:
            req = codec.recv(3)
        except (EOFError, OSError):
            os._exit(72)
        if req.get("op") == "finish":
            break
        try:
            if req["op"] == "get":
                value = g[req["name"]]
            else:
                target = codec.decode(req["target"], resolve)
                if req["op"] == "call":
                    value = target(*codec.decode(req["args"], resolve),
                                   **{k: codec.decode(v, resolve) for k, v in req["kwargs"].items()})
                elif req["op"] == "getattr":
                    value = getattr(target, req["name"])
                else:
                    raise ValueError(f"unknown op {req['op']!r}")
            reply = {"ok": codec.encode(value, handle)}
        except KeyError as e:
            reply = {"err": ["NameError", f"name {e} is not defined"]} if req.get("op") == "get" else \
                {"err": ["KeyError", str(e)]}
        except BaseException as e:  # noqa: BLE001
            reply = {"err": [type(e).__name__, str(e)[:1000]]}
        try:
            codec.send(3, reply)
        except BaseException:  # noqa: BLE001 - an unencodable or huge reply: the job loop sees the end
            os._exit(73)
    # End as the interpreter would: wait for the program's non-daemon threads (a spinning one ends in a
    # timeout). os._exit, because this process is a fork of the zygote's loop.
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    os._exit(0)


if __name__ == "__main__":
    main()
