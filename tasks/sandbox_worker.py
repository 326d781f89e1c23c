"""A sandbox worker: the trusted job loop that holds the tests, and the handle on its zygote.

Started by the pool as ``python -I tasks/sandbox_worker.py --worker CONFIG`` with an empty environment. It opens its
cgroup (``sandbox_cgroup``), enters its jail (``sandbox_jail.enter_jail``: new mount/network/IPC/PID namespaces,
an empty root with only /usr and the interpreter), exec's a fresh zygote (``sandbox_zygote``) that is PID 1 of
the jail's PID namespace, and then serves jobs one at a time:

1. the zygote forks a program process; the job loop sends the program text to it directly;
2. the tests run HERE (``sandbox_trusted.run_tests``), calling the program's entry point through a proxy;
3. the program must then exit by itself within the wall time, with the tree's CPU time under ``cpu_s``;
4. whatever happened, the zygote kills and reaps every process of the job and removes its directory before
   the next job starts (``finally``); if that fails the worker exits, the kernel kills its whole PID
   namespace, and the pool starts a new worker.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import sandbox_cgroup  # noqa: E402
import sandbox_codec as codec  # noqa: E402
import sandbox_jail as jail  # noqa: E402
import sandbox_trusted  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_DETAIL = 500


class ZygoteGone(Exception):
    """The zygote died or stopped answering: the worker cannot vouch for its jail any more."""


class Zygote:
    """The job loop's handle on its zygote: program processes come forked ahead, one per job, each with its
    socket; the zygote reports each job's end once, after it killed and reaped the job's processes."""

    def __init__(self, python: str, script: str, jailed: bool, cgroup, config: dict):
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # becomes PID 1 of the jail's PID namespace
            try:
                os.dup2(theirs.fileno(), 3)
                os.closerange(4, 65536)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1):  # stderr stays the worker's: the pool shows it when a worker fails
                    os.dup2(devnull, fd)
                jail.libc.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.execve(python, [python, "-I", "-S", script, "jail" if jailed else "plain", json.dumps(config)],
                          {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
            except BaseException as e:  # noqa: BLE001 - tell the job loop why, then die
                os.write(3, json.dumps({"error": f"exec {python} {script}: {type(e).__name__}: {e}"}).encode())
            finally:
                os._exit(70)
        theirs.close()
        if cgroup is not None:
            cgroup.add(pid)
        self.pid, self.seq, self.exit_status, self.cleaned = pid, 0, None, True
        self.next = None  # (seq, socket, limits) of the program process waiting for the next job
        try:
            self._recv(time.monotonic() + 30, want_next=True)
        except TimeoutError:
            raise ZygoteGone("zygote did not start within 30 s") from None

    def _recv(self, deadline: float, want_next: bool = False) -> None:
        """Read messages until one about the current job arrives (or, with ``want_next``, until a program
        process for the next job is ready). Raises TimeoutError at the deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ctl], [], [], left)[0]:
                raise TimeoutError
            data, fds, _, _ = socket.recv_fds(self.ctl, 1 << 16, 1)
            if not data:
                raise ZygoteGone("zygote closed its socket")
            msg = json.loads(data)
            if "error" in msg:
                raise ZygoteGone(f"zygote: {msg['error']}")
            if msg.get("spawned"):
                if self.next is not None:
                    self.next[1].close()
                self.next = (msg["job"], socket.socket(fileno=fds[0]), msg["limits"])
                if want_next:
                    return
            elif msg.get("job") == self.seq and msg.get("cleaned") and not want_next:
                self.cleaned, self.exit_status = True, msg["exit"]
                return

    def take(self, limits: dict) -> socket.socket:
        """The socket of a program process with ``limits`` for the job about to start."""
        deadline = time.monotonic() + 10
        try:
            if self.next is None:
                self._recv(deadline, want_next=True)
            if self.next[2] != limits:  # forked with other limits: replace it
                self.ctl.send(json.dumps({"op": "respawn", "job": self.next[0], "limits": limits}).encode())
                self.next[1].close()
                self.next = None
                while self.next is None or self.next[2] != limits:
                    self._recv(deadline, want_next=True)
        except (TimeoutError, OSError) as e:
            raise ZygoteGone(f"no program process for the job: {type(e).__name__}") from None
        self.seq, sock, _ = self.next
        self.next, self.exit_status, self.cleaned = None, None, False
        return sock

    def wait_exit(self, deadline: float, over_cpu) -> str | None:
        """"exited", "cpu" (tree over its CPU time) or None (wall time): whichever comes first. The zygote
        kills and reaps the rest of the job as soon as the program exits."""
        while not self.cleaned:
            if over_cpu():
                return "cpu"
            try:
                self._recv(min(deadline, time.monotonic() + 0.02))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return None
        return "exited"

    def clean(self) -> None:
        """Kill and reap every process of the job now (when it did not end by itself)."""
        if self.cleaned:
            return
        try:
            self.ctl.send(json.dumps({"op": "clean", "job": self.seq}).encode())
            deadline = time.monotonic() + 10
            while not self.cleaned:
                self._recv(deadline)
        except (OSError, TimeoutError, ValueError) as e:
            raise ZygoteGone(f"cleanup failed: {type(e).__name__}: {e}") from None


def run_job(job: dict, limits: dict, zyg: Zygote, cgroup) -> dict:
    """{"status", "tests", "detail"} of one job; every process of it is gone when this returns."""
    deadline = time.monotonic() + limits["wall_s"]
    cpu0 = cgroup.cpu_ns() if cgroup is not None else 0
    oom0 = cgroup.oom_kills() if cgroup is not None else 0

    def over_cpu() -> bool:
        return cgroup is not None and cgroup.cpu_ns() - cpu0 > limits["cpu_s"] * 1e9

    how = None
    try:
        sock = zyg.take(limits)
        with sock:
            tests, detail = sandbox_trusted.run_tests(sock.fileno(), job, deadline, limits["reply_kb"] << 10,
                                                     over_cpu)
        how = zyg.wait_exit(deadline, over_cpu)
        status = zyg.exit_status
    finally:
        zyg.clean()
    if cgroup is not None and cgroup.oom_kills() > oom0:
        # the tree hit its memory limit: the OOM killer chose a victim, which need not be the process that
        # asked for more, so whatever the program reported afterwards is not trusted
        return {"status": "failed", "tests": tests,
                "detail": f"the job's processes exceeded {limits['memory_mb']} MB together (OOM killer)"}
    if how == "cpu" or over_cpu():
        return {"status": "timeout", "tests": tests, "detail": f"CPU time {limits['cpu_s']} s of the job exceeded"}
    if how is None:
        return {"status": "timeout", "tests": tests, "detail": detail or f"wall time {limits['wall_s']} s exceeded"}
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        if -code in (signal.SIGXCPU, signal.SIGKILL):
            return {"status": "timeout", "tests": tests, "detail": f"killed ({name}): CPU or memory limit; {detail}"}
        return {"status": "failed", "tests": tests, "detail": detail or f"program killed by signal {name}"}
    if code != 0:
        return {"status": "failed", "tests": tests, "detail": detail or f"program exited with status {code}"}
    return {"status": "passed" if tests and all(tests) else "failed", "tests": tests, "detail": detail}


def main(config: dict) -> None:
    try:
        zyg, cgroup = start(config)
    except Exception as e:  # noqa: BLE001 - the pool reports why this worker could not start
        codec.send(1, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    serve(config["limits"], zyg, cgroup)


def start(config: dict):
    """Cgroup, jail, zygote; then tell the pool which isolation this worker got."""
    limits, mode = config["limits"], config["mode"]
    uid = config["uid"] if os.geteuid() == 0 else None
    files = {}
    for name in jail.JAIL_FILES:
        with open(os.path.join(HERE, name), "rb") as f:
            files[name] = f.read()
    cgroup = sandbox_cgroup.JobCgroup.create(config["cgroup"], limits["memory_mb"], limits["nproc"]) \
        if os.geteuid() == 0 else None
    python = os.path.realpath(sys.executable)
    scratch = jail.enter_jail(limits["tmpfs_mb"], files) if mode != "rlimits" else None
    jailed = scratch is not None
    if mode == "namespaces" and not jailed:
        raise OSError("namespaces refused (needs root / CAP_SYS_ADMIN)")
    root = scratch if jailed else config["scratch"]  # made (and removed) by the pool
    script = f"{jail.SANDBOX_DIR}/sandbox_zygote.py" if jailed else os.path.join(HERE, "sandbox_zygote.py")
    zyg = Zygote(python, script, jailed, cgroup, {"uid": uid, "limits": limits, "root": root})
    mb = limits["trusted_memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (mb, mb))  # the job loop itself: a reply cannot grow it unbounded
    codec.send(1, {"ready": True, "mode": "namespaces" if jailed else "rlimits", "uid": uid,
                   "cgroup": cgroup.kind if cgroup is not None else None,
                   "seccomp": jail.platform.machine() == "x86_64"})
    return zyg, cgroup


def serve(limits: dict, zyg: Zygote, cgroup) -> None:
    while True:
        try:
            job = codec.recv(0)
        except EOFError:
            break
        start = time.monotonic()
        job_limits = {**limits, **job.get("limits", {})}
        try:
            result = run_job(job, job_limits, zyg, cgroup)
        except ZygoteGone as e:
            codec.send(1, {"status": "error", "tests": [False] * len(job["tests"]), "detail": str(e)[:200]})
            os._exit(1)  # the kernel kills the jail's PID namespace with the zygote; the pool starts anew
        except Exception as e:  # noqa: BLE001 - report, keep serving (cleanup already ran)
            result = {"status": "error", "tests": [False] * len(job["tests"]),
                      "detail": f"sandbox error: {type(e).__name__}: {e}"}
        result["detail"] = str(result["detail"])[:RESULT_DETAIL]
        result["seconds"] = time.monotonic() - start
        codec.send(1, result)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    main(json.loads(sys.argv[2]))
