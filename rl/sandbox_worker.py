"""A sandbox worker: the trusted job loop that holds the tests, and the handle on its zygote.

Started by the pool as ``python -I rl/sandbox_worker.py --worker CONFIG`` with an empty environment. It opens its
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
import tempfile  # noqa: E402
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
    def __init__(self, python: str, script: str, jailed: bool, cgroup):
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # becomes PID 1 of the jail's PID namespace
            try:
                os.dup2(theirs.fileno(), 3)
                os.closerange(4, 65536)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                jail.libc.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.execve(python, [python, "-I", "-S", script, "jail" if jailed else "plain"],
                          {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
            finally:
                os._exit(70)
        theirs.close()
        self.pid, self.exit_status = pid, None
        if cgroup is not None:
            cgroup.add(pid)
        if not self._recv(time.monotonic() + 30).get("ready"):
            raise ZygoteGone("zygote did not start")

    def _recv(self, deadline: float) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ctl], [], [], left)[0]:
                raise TimeoutError
            data = self.ctl.recv(1 << 16)
            if not data:
                raise ZygoteGone("zygote closed its socket")
            msg = json.loads(data)
            if "exit" not in msg:
                return msg
            self.exit_status = msg["exit"]
            return msg

    def spawn(self, sock: socket.socket, req: dict) -> int:
        self.exit_status = None
        socket.send_fds(self.ctl, [json.dumps({"op": "spawn", **req}).encode()], [sock.fileno()])
        msg = self._recv(time.monotonic() + 10)
        if "pid" not in msg:
            raise ZygoteGone(f"unexpected answer to spawn: {msg}")
        return msg["pid"]

    def wait_exit(self, deadline: float, over_cpu) -> str | None:
        """"exited", "cpu" (tree over its CPU time) or None (wall time): whichever comes first."""
        while self.exit_status is None:
            if over_cpu():
                return "cpu"
            try:
                self._recv(min(deadline, time.monotonic() + 0.02))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return None
        return "exited"

    def clean(self, workdir: str) -> None:
        try:
            self.ctl.send(json.dumps({"op": "clean", "dir": workdir}).encode())
            deadline = time.monotonic() + 10
            while not self._recv(deadline).get("cleaned"):
                pass
        except (OSError, TimeoutError, ValueError) as e:
            raise ZygoteGone(f"cleanup failed: {type(e).__name__}: {e}") from None


def run_job(job: dict, limits: dict, zyg: Zygote, cgroup, uid, workdir: str) -> dict:
    """{"status", "tests", "detail"} of one job; every process of it is gone when this returns."""
    deadline = time.monotonic() + limits["wall_s"]
    cpu0 = cgroup.cpu_ns() if cgroup is not None else 0

    def over_cpu() -> bool:
        return cgroup is not None and cgroup.cpu_ns() - cpu0 > limits["cpu_s"] * 1e9

    os.mkdir(workdir, 0o700)
    if uid is not None:
        os.chown(workdir, uid, uid)
    ours, theirs = socket.socketpair()
    how = None
    try:
        zyg.spawn(theirs, {"limits": limits, "uid": uid, "dir": workdir})
        theirs.close()
        tests, detail = sandbox_trusted.run_tests(ours.fileno(), job, deadline, limits["reply_kb"] << 10,
                                                 over_cpu)
        ours.close()
        how = zyg.wait_exit(deadline, over_cpu)
        status = zyg.exit_status
    finally:
        ours.close()
        theirs.close()
        zyg.clean(workdir)
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
    limits, mode = config["limits"], config["mode"]
    uid = config["uid"] if os.geteuid() == 0 else None
    files = {}
    for name in jail.JAIL_FILES:
        with open(os.path.join(HERE, name), "rb") as f:
            files[name] = f.read()
    cgroup = sandbox_cgroup.JobCgroup.create(config["cgroup"], limits["memory_mb"], limits["nproc"]) \
        if os.geteuid() == 0 else None
    python = os.path.realpath(sys.executable)
    jailed = mode != "rlimits" and jail.enter_jail(limits["tmpfs_mb"], files)
    if mode == "namespaces" and not jailed:
        codec.send(1, {"ready": False, "error": "namespaces refused (needs root / CAP_SYS_ADMIN)"})
        return
    root = "/tmp" if jailed else tempfile.mkdtemp(prefix="ragkit-sandbox-")
    script = f"{jail.SANDBOX_DIR}/sandbox_zygote.py" if jailed else os.path.join(HERE, "sandbox_zygote.py")
    zyg = Zygote(python, script, jailed, cgroup)
    mb = limits["trusted_memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (mb, mb))  # the job loop itself: a reply cannot grow it unbounded
    codec.send(1, {"ready": True, "mode": "namespaces" if jailed else "rlimits", "uid": uid,
                   "cgroup": cgroup.kind if cgroup is not None else None,
                   "seccomp": jail.platform.machine() == "x86_64"})
    seq = 0
    while True:
        try:
            job = codec.recv(0)
        except EOFError:
            break
        seq += 1
        start = time.monotonic()
        job_limits = {**limits, **job.get("limits", {})}
        try:
            result = run_job(job, job_limits, zyg, cgroup, uid, os.path.join(root, f"job-{seq}"))
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
