"""The zygote and the untrusted program of the code sandbox.

The **zygote** is a fresh interpreter (``python -I -S``, exec'd by the job loop when the worker starts) that
never receives a job: it forks one program process ahead of each job and otherwise only hears "clean" or
"respawn with these limits", so no test, gold answer or checker helper is ever in its memory, nor in the
memory of the processes it forks. In a jail it is PID 1 of the worker's PID namespace: ``kill(-1)`` from it
reaches every process a program left (also ones that called ``setsid``), it reaps them all, and the kernel
shields it from the programs' signals. Without a jail it is a child subreaper and kills its children.

The **program process** enters a new IPC namespace (its SysV/POSIX IPC objects die with its last process)
and takes its rlimits, then waits, as root and holding nothing, for the program text from the job loop; only
then does it drop to the worker's uid with no_new_privs and the seccomp filter (``sandbox_jail``), run the
program and answer ``get`` / ``call`` / ``getattr`` requests with plain data (``sandbox_codec``).
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
PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    import importlib

    jailed, config = sys.argv[1] == "jail", json.loads(sys.argv[2])
    if jailed:  # PID 1 of the worker's PID namespace: its own /proc, no other process of the host in it
        jail.mount("proc", "/proc", "proc", jail.MS_NOSUID | jail.MS_NODEV | jail.MS_NOEXEC, "hidepid=2")
    _oom_score_adj("-1000")  # the OOM killer of the job's cgroup takes the program, not the zygote
    jail.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the job's orphans come here, also without a jail
    for name in PRELOAD:
        importlib.import_module(name)
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the loop at once: the job ends when its program exits
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()  # fewer copy-on-write page faults in the forks
    ctl = socket.socket(fileno=CONTROL_FD)  # SOCK_SEQPACKET: one record per message, fds beside it
    job = Job(jailed, config, ctl)
    job.prespawn(config["limits"])
    while True:
        ready = select.select([ctl, wake_r], [], [], 1.0)[0]
        if wake_r in ready:
            os.read(wake_r, 512)
        if ctl in ready:
            msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 1)
            for fd in fds:
                os.close(fd)
            if not msg:
                os._exit(0)  # the job loop is gone
            req = json.loads(msg)
            if req["op"] == "respawn":  # the next job wants other limits
                job.discard(req["job"])
                job.prespawn(req["limits"])
            elif req["op"] == "clean":
                job.clean(req["job"])
        job.reap()


def tell(obj) -> None:
    os.write(CONTROL_FD, json.dumps(obj).encode())


class Job:
    """The program process of the current job, forked AHEAD of the job (its setup is off the job's critical
    path; it holds nothing but its limits until the job loop sends the program). When it exits, or when the
    job loop says ``clean``, every process of the job is killed and reaped and its directory removed; ONE
    message reports the exit status; then the next program process is forked with the default limits."""

    def __init__(self, jailed: bool, config: dict, ctl: socket.socket):
        self.jailed, self.config, self.ctl = jailed, config, ctl
        self.pid, self.seq, self.dir = None, 0, None

    def prespawn(self, limits: dict) -> None:
        self.seq += 1
        self.dir = os.path.join(self.config["root"], f"job-{self.seq}")
        os.mkdir(self.dir, 0o700)
        if self.config["uid"] is not None:
            os.chown(self.dir, self.config["uid"], self.config["uid"])
        ours, theirs = socket.socketpair()
        req = {"limits": limits, "uid": self.config["uid"], "dir": self.dir}
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                _program_process(theirs.detach(), req, self.jailed)
            finally:
                os._exit(70)
        theirs.close()
        self.pid = pid
        socket.send_fds(self.ctl, [json.dumps({"job": self.seq, "spawned": True, "limits": limits}).encode()],
                        [ours.fileno()])
        ours.close()

    def reap(self) -> None:
        """Finish the job if its program exited; reap orphans (in a jail they all land here)."""
        if self.pid is not None and os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            self._kill_all()  # before reaping: while the zombie holds its pid, the group id cannot be reused
            self._finish(os.waitpid(self.pid, 0)[1])
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self._finish(status)

    def clean(self, seq: int) -> None:
        if self.pid is None or seq != self.seq:
            tell({"job": seq, "exit": None, "cleaned": True})  # already finished and reported
            return
        self._stop()
        self._finish(os.waitpid(self.pid, 0)[1])

    def discard(self, seq: int) -> None:
        """Drop the waiting program process unused (no report)."""
        if self.pid is not None and seq == self.seq:
            self._stop()
            os.waitpid(self.pid, 0)
            self._reap_all()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.pid = None

    def _stop(self) -> None:
        self._kill_all()
        os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid is still this job's

    def _kill_all(self) -> None:
        """Jailed: as PID 1 of the namespace, ``kill(-1)`` reaches everyone but this process. Otherwise every
        child of this process (a child subreaper: the job's orphans, setsid'd or not, land here)."""
        if self.jailed:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            return
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)  # a child, reaped only by this process: its pid cannot be reused
            except OSError:
                pass

    def _reap_all(self) -> None:
        """Kill and reap until no process of the job is left (killing a process hands its children to this
        one, which kills them in the next round)."""
        while True:
            self._kill_all()
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    return

    def _finish(self, status: int) -> None:
        """The program process is reaped; kill and reap what is left of the job, report, fork the next."""
        self._reap_all()
        shutil.rmtree(self.dir, ignore_errors=True)
        tell({"job": self.seq, "exit": status, "cleaned": True})
        self.pid = None
        self.prespawn(self.config["limits"])


def _children() -> list[int]:
    me, out = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(entry))
            except (OSError, IndexError):
                pass
    return out


def _oom_score_adj(value: str) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:  # lowering it needs root (rlimits mode as a user)
        pass


def _program_process(sock_fd: int, req: dict, jailed: bool) -> None:
    import resource

    limits, uid, workdir = req["limits"], req["uid"], req["dir"]
    parent = os.getppid()
    jail.libc.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
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
    # Forked ahead of its job, the process waits here as root, holding nothing, until the program arrives;
    # only then does it become the program's: uid, parent-death signal, no_new_privs and seccomp.
    first = codec.recv(3)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # A credential change clears the parent-death signal: set it after setuid, then check the zygote lives.
    jail.libc.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(71)
    jail.install_filter()
    # the zygote's objects stay frozen: a full collection in the program would otherwise touch (and copy) them all
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
    _serve(first["program"], first.get("get", []), first.get("calls", []), first.get("budget", 0))


def _serve(program: str, names: list, calls: list, budget: int) -> None:
    """Run the program, send the values of ``names`` and the answers to the prefetched ``calls`` (see
    ``sandbox_prefetch``) with the news that it loaded, then answer the job loop's requests until it says
    ``finish``."""
    handles: list = []

    def handle(v):
        handles.append(v)
        return {"h": len(handles) - 1}

    g = {"__name__": "__main__", "__builtins__": builtins}

    def resolve(tag, key):
        return g[key] if tag == "g" else handles[key]

    def answer(req: dict) -> dict:
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
            return {"ok": codec.encode(value, handle)}
        except KeyError as e:
            return {"err": ["NameError", f"name {e} is not defined"]} if req.get("op") == "get" else \
                {"err": ["KeyError", str(e)]}
        except BaseException as e:  # noqa: BLE001
            return {"err": [type(e).__name__, str(e)[:1000]]}

    try:
        exec(compile(program, "<program>", "exec"), g)
        hello = {"loaded": True}
    except BaseException as e:  # noqa: BLE001 - SystemExit before the tests is a failed program too
        hello = {"loaded": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    if hello["loaded"]:
        hello["got"] = {name: answer({"op": "get", "name": name}) for name in names}
        hello["calls"], size = [], 0
        for c in calls:  # answers beyond the job loop's budget are dropped: those calls are made live later
            a = answer({"op": "call", "target": {"g": c["name"]}, "args": c["args"], "kwargs": c["kwargs"]})
            size += len(json.dumps(a))
            if size > budget:
                break
            hello["calls"].append(a)
    try:
        codec.send(3, hello)
    except BaseException:  # noqa: BLE001 - unencodable or huge: the job loop sees the end
        os._exit(73)
    if not hello["loaded"]:
        return
    while True:
        try:
            req = codec.recv(3)
        except (EOFError, OSError):
            os._exit(72)
        if req.get("op") == "finish":
            break
        reply = answer(req)
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
