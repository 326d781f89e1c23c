"""Run untrusted programs against unit tests, many in parallel, and decide pass/fail out of band.

Two kinds of process take part in each check, and only one of them runs the untrusted code:

* the **pool** (:class:`Sandbox`, in the trainer) keeps ``workers`` long-lived worker processes and hands each
  one job at a time. Workers are fresh interpreters (``python -I rl/sandbox.py --worker``) started with an empty
  environment, so neither the trainer's memory nor its environment variables (secrets) reach them. A worker's
  job loop (trusted) runs the *test code* (HumanEval's ``check``, MBPP's asserts) itself. Every name the tests
  take from the program (the entry point, helpers such as HumanEval's ``poly``, MBPP's ``root``) is a
  :class:`Remote` proxy: calling it sends the arguments to the untrusted process and receives the return value
  back as data;
* the **untrusted process** (forked by the job loop per job) executes the program and then only answers
  requests ``get name`` / ``call`` / ``getattr``. Return values cross as JSON restricted to *exact* builtin types
  (``type(v) is int``, never a subclass); anything else (an object whose ``__eq__`` always returns True, an
  ``int`` subclass) comes back as an opaque handle that can be called or passed back but refuses ``==``,
  ``<``, ``bool``, ``hash`` and iteration, so a test comparing it fails. The asserts run in the job loop, on
  values it decoded itself: the program cannot print, exit or write its way to a pass. Its stdout/stderr go
  to /dev/null; whatever it writes to its socket can only be an answer to the current request.

A job passes when every test ran without an exception in the job loop AND the untrusted process then exited
by itself with status 0 within the wall time (so a non-daemon thread spinning forever fails by timeout).

Isolation of the untrusted process (``Sandbox.isolation`` reports which mode a worker got):

* always: a session/process group of its own, cwd = a fresh private directory (removed afterwards),
  ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL one second later), ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``,
  ``RLIMIT_NOFILE``, no core dumps, a clean environment (``PATH``, ``HOME``/``TMPDIR`` = its directory,
  ``LANG``), stdin/stdout/stderr on /dev/null, only its protocol socket open, a wall-time limit, and
  ``PR_SET_PDEATHSIG`` so it dies with the worker.
* ``mode="namespaces"`` (root, or CAP_SYS_ADMIN; the default on the project's machines): each worker lives in
  its own network namespace (no interface but a down loopback: no TCP/UDP anywhere, localhost included), mount
  namespace (every mount except /proc, /sys and /dev re-mounted read-only and nosuid; /tmp a private
  size-capped tmpfs holding the job directories; a private interpreter directory such as pyenv's under /root
  re-exposed read-only, the rest of it hidden) and PID namespace whose PID 1 is the job loop: after each job
  ``kill(-1, SIGKILL)`` there kills every process the program started (also ones that called ``setsid``) and
  nothing outside, and ``kill(getppid())`` cannot touch the loop (the kernel shields a namespace's init). The
  program runs as an unprivileged uid of its own (``base_uid + worker index``), so ``RLIMIT_NPROC`` counts only
  its processes (root is exempt from that limit) and it cannot signal, read (``/proc/<pid>/environ``) or write
  anything of root's.
* ``mode="rlimits"`` (fallback when namespaces are refused): same limits, but the program runs as the
  calling user. Not guaranteed then: network access is blocked only by replacing ``socket.socket`` and
  ``_socket.socket`` before the program runs (ctypes or a subprocess can get around it); files the user
  may write can be written; ``RLIMIT_NPROC`` counts all the user's processes; a child that leaves the process
  group survives the cleanup; the program may signal every process of the user (``kill(-1)`` would reach
  the trainer). Use the namespaces mode for untrusted policy samples.

Neither mode is a container: the program can read world-readable files and see other processes in
/proc (not their environments or memory).
"""

from __future__ import annotations

import ast
import builtins
import collections
import ctypes
import gc
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

_LEN = struct.Struct(">I")
_MAX_MESSAGE = 64 << 20

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1


@dataclass
class SandboxLimits:
    """Per-job limits. ``wall_s`` covers loading the program, every test and the program's own exit."""

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 1024  # RLIMIT_AS of the untrusted process
    fsize_mb: int = 16  # largest file it may write
    nproc: int = 16  # processes + threads of its uid (namespaces mode) / of the user (rlimits mode)
    nofile: int = 64
    tmpfs_mb: int = 256  # namespaces mode: the worker's /tmp, which holds its job directories


@dataclass
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error" (the sandbox itself failed)
    tests: list[bool] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------------------
# framing and the value codec (shared by every side)


def _send(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    data = _LEN.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer within the wall time")
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return bytes(buf)


def _recv(fd: int, deadline: float | None = None):
    (n,) = _LEN.unpack(_recv_exact(fd, 4, deadline))
    if n > _MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes exceeds {_MAX_MESSAGE}")
    return json.loads(_recv_exact(fd, n, deadline))


_SCALARS = (type(None), bool, int, float, str)
_MAPPINGS = {collections.Counter: "ctr", collections.OrderedDict: "od", collections.defaultdict: "dd"}
_MAPPING_TYPES = {tag: t for t, tag in _MAPPINGS.items()}


class MatchResult:
    """A ``re.Match`` returned by the program, rebuilt from data on the trusted side: truthy, with the groups
    and spans it had (tests such as MBPP's ``assert text_match(...)`` only need that)."""

    def __init__(self, groups: list, spans: list):
        self._groups, self._spans = groups, [tuple(sp) for sp in spans]

    def group(self, *idx):
        return self._groups[idx[0] if idx else 0] if len(idx) <= 1 else tuple(self._groups[i] for i in idx)

    def groups(self):
        return tuple(self._groups[1:])

    def span(self, i=0):
        return self._spans[i]

    def start(self, i=0):
        return self._spans[i][0]

    def end(self, i=0):
        return self._spans[i][1]

    def __repr__(self):
        return f"<re.Match span={self._spans[0]} match={self._groups[0]!r}>"


def _encode(v, handle):
    """Exact builtin (and a few stdlib container) types to tagged JSON; anything else through ``handle(v)``
    (a handle tag, or an error on the trusted side)."""
    t = type(v)
    if t in _SCALARS:
        return v
    if t is type and getattr(builtins, v.__name__, None) is v:
        return {"ty": v.__name__}
    if t in _MAPPINGS:
        return {_MAPPINGS[t]: [[_encode(k, handle), _encode(x, handle)] for k, x in v.items()]}
    if t is collections.deque:
        return {"dq": [_encode(x, handle) for x in v]}
    if t is re.Match:
        n = v.re.groups + 1
        return {"m": [[_encode(v.group(i), handle) for i in range(n)], [list(v.span(i)) for i in range(n)]]}
    if t is list:
        return [_encode(x, handle) for x in v]
    if t is tuple:
        return {"t": [_encode(x, handle) for x in v]}
    if t is set:
        return {"s": [_encode(x, handle) for x in v]}
    if t is frozenset:
        return {"fs": [_encode(x, handle) for x in v]}
    if t is dict:
        return {"d": [[_encode(k, handle), _encode(x, handle)] for k, x in v.items()]}
    if t is bytes:
        return {"b": v.hex()}
    if t is complex:
        return {"c": [v.real, v.imag]}
    return handle(v)


def _decode(v, ref):
    """Tagged JSON to fresh builtin values; ``{"h": id}`` / ``{"g": name}`` through ``ref``."""
    if type(v) is list:
        return [_decode(x, ref) for x in v]
    if type(v) is not dict:
        return v
    if len(v) != 1:
        raise ValueError("malformed value")
    (tag, x), = v.items()
    if tag == "t":
        return tuple(_decode(y, ref) for y in x)
    if tag == "s":
        return {_decode(y, ref) for y in x}
    if tag == "fs":
        return frozenset(_decode(y, ref) for y in x)
    if tag == "d":
        return {_decode(k, ref): _decode(y, ref) for k, y in x}
    if tag == "b":
        return bytes.fromhex(x)
    if tag == "ty":
        t = getattr(builtins, x)
        if type(t) is not type:
            raise ValueError(f"{x!r} is not a builtin type")
        return t
    if tag in _MAPPING_TYPES:
        items = [(_decode(k, ref), _decode(y, ref)) for k, y in x]
        return collections.defaultdict(None, items) if tag == "dd" else _MAPPING_TYPES[tag](dict(items)) \
            if tag == "ctr" else _MAPPING_TYPES[tag](items)
    if tag == "dq":
        return collections.deque(_decode(y, ref) for y in x)
    if tag == "m":
        return MatchResult([_decode(g, ref) for g in x[0]], [[int(a), int(b)] for a, b in x[1]])
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag in ("h", "g"):
        return ref(tag, x)
    raise ValueError(f"unknown tag {tag!r}")


# ----------------------------------------------------------------------------------------------------------
# driver side (trusted): proxies for the program's objects


class RemoteError(Exception):
    """An exception raised inside the untrusted program whose type is not a builtin exception."""


class UntrustedValue(TypeError):
    """A test tried to compare, hash, test the truth of or iterate an object built by the program."""


_BUILTIN_EXC = {n: e for n, e in vars(builtins).items() if isinstance(e, type) and issubclass(e, Exception)}


class _Channel:
    def __init__(self, fd: int, deadline: float):
        self.fd, self.deadline, self.dead = fd, deadline, None

    def request(self, op: str, **kw):
        if self.dead:
            raise RemoteError(f"program is gone ({self.dead})")
        try:
            _send(self.fd, {"op": op, **kw})
            reply = _recv(self.fd, self.deadline)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            self.dead = f"{type(e).__name__}: {e}"
            raise RemoteError(f"program is gone ({self.dead})") from None
        if type(reply) is not dict:
            self.dead = "malformed reply"
            raise RemoteError(self.dead)
        if "err" in reply:
            name, msg = (list(reply["err"]) + ["", ""])[:2]
            raise _BUILTIN_EXC.get(name, RemoteError)(str(msg))
        return _decode(reply.get("ok"), self.ref)

    def ref(self, tag, key):
        return Remote(self, {tag: key})

    def arg(self, v):
        def handle(x):
            if type(x) is Remote and object.__getattribute__(x, "_ch") is self:
                return object.__getattribute__(x, "_ref")
            raise TypeError(f"cannot pass a {type(x).__name__} to the program")
        return _encode(v, handle)


class Remote:
    """An object that lives in the untrusted process: it can be called, its attributes read, and it can be
    passed back as an argument; nothing else (``==`` on it raises, so a lying ``__eq__`` fails the test)."""

    __slots__ = ("_ch", "_ref")

    def __init__(self, ch: _Channel, ref: dict):
        object.__setattr__(self, "_ch", ch)
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        ch = object.__getattribute__(self, "_ch")
        return ch.request("call", target=object.__getattribute__(self, "_ref"), args=ch.arg(list(args)),
                          kwargs={k: ch.arg(v) for k, v in kwargs.items()})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        ch = object.__getattribute__(self, "_ch")
        return ch.request("getattr", target=object.__getattribute__(self, "_ref"), name=name)

    def __setattr__(self, name, value):
        raise UntrustedValue("cannot set attributes of a program object")

    def _refuse(self, *a, **k):
        raise UntrustedValue("a test compared or inspected an object built by the program (not a plain value)")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __bool__ = __len__ = __iter__ = _refuse
    __contains__ = __getitem__ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __float__ = __int__ = __index__ = __abs__ = __neg__ = _refuse

    def __repr__(self):
        return "<program object>"


def _free_names(codes: Sequence[str], shadow: Sequence[str] = ()) -> list[str]:
    """Names the test code reads but never binds: they come from the program. Builtins stay the trusted
    builtins unless named in ``shadow`` (a task whose function under test is called ``sum``): a program
    that rebinds ``range`` or ``all`` must not be able to empty a test's loop."""
    loads, stores = set(), set()
    for code in codes:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Name):
                (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stores.add(node.name)
            elif isinstance(node, ast.arg):
                stores.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                stores.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                stores.add(node.name)
    return sorted(n for n in loads - stores if not hasattr(builtins, n) or n in shadow)


def _run_tests(fd: int, job: dict, deadline: float) -> tuple[list[bool], str]:
    ch = _Channel(fd, deadline)
    hello = _recv(fd, deadline)
    if type(hello) is not dict or hello.get("loaded") is not True:
        msg = hello.get("error") if type(hello) is dict else None
        return [False] * len(job["tests"]), f"program failed to load: {str(msg)[:500]}"
    ns: dict = {"__name__": "__test__"}
    exec(compile(job.get("prelude", ""), "<prelude>", "exec"), ns)
    for name in _free_names([job.get("prelude", ""), *job["tests"]], job.get("shadow", ())):
        try:
            ns[name] = ch.request("get", name=name)
        except NameError:
            pass  # the test that uses it fails with NameError
    results, detail = [], ""
    for i, test in enumerate(job["tests"]):
        try:
            exec(compile(test, f"<test {i}>", "exec"), ns)
            results.append(True)
        except BaseException as e:  # noqa: BLE001 - any failure of a test is a failed test
            results.append(False)
            detail = detail or f"test {i}: {type(e).__name__}: {str(e)[:300]}"
    try:
        _send(fd, {"op": "finish"})
    except OSError:
        pass
    return results, detail


def _run_job(job: dict, limits: dict, workdir: str, uid: int | None, namespaces: bool) -> dict:
    """Runs in the worker's job loop (trusted): fork the program, run the tests against it, clean up.

    Returns {"status", "tests", "detail"}. In namespaces mode the loop is PID 1 of the worker's PID namespace,
    so ``kill(-1, SIGKILL)`` afterwards reaches every process the program left, and nothing else."""
    start = time.monotonic()
    deadline = start + limits["wall_s"]
    parent_sock, child_sock = socket.socketpair()
    gc.freeze()  # fewer copy-on-write page faults in the child
    pid = os.fork()
    if pid == 0:
        try:
            parent_sock.close()
            _untrusted(child_sock.detach(), job["program"], limits, workdir, uid, namespaces)
        finally:
            os._exit(70)
    child_sock.close()
    status = "failed"
    try:
        tests, detail = _run_tests(parent_sock.fileno(), job, deadline)
    except (TimeoutError, EOFError, OSError, ValueError) as e:
        tests, detail = [False] * len(job["tests"]), f"program died or timed out before the tests: {e}"
    finally:
        parent_sock.close()
    # The program must also end by itself (a spinning non-daemon thread does not).
    exit_status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            exit_status = st
            break
        time.sleep(0.001)
    if exit_status is None:
        status, detail = "timeout", detail or f"wall time {limits['wall_s']} s exceeded"
    _kill_leftovers(pid, namespaces)
    if exit_status is None:
        exit_status = os.waitpid(pid, 0)[1]
    _reap()
    code = os.waitstatus_to_exitcode(exit_status)  # negative: killed by that signal
    if status != "timeout":
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            detail = detail or f"program killed by signal {name}"
            if -code in (signal.SIGXCPU, signal.SIGKILL):
                status, detail = "timeout", f"CPU time {limits['cpu_s']} s exceeded or killed ({name}); {detail}"
        elif code != 0:
            detail = detail or f"program exited with status {code}"
        elif tests and all(tests):
            status = "passed"
    return {"status": status, "tests": tests, "detail": detail}


def _kill_leftovers(pid: int, namespaces: bool) -> None:
    """Kill the program and everything it started. As PID 1 of its namespace the job loop is the only process
    ``kill(-1)`` spares there; without namespaces only the program's process group can be reached."""
    targets = [lambda: os.kill(-1, signal.SIGKILL)] if namespaces else [lambda: os.killpg(pid, signal.SIGKILL),
                                                                         lambda: os.kill(pid, signal.SIGKILL)]
    for kill in targets:
        try:
            kill()
        except OSError:
            pass


def _reap() -> None:
    """Wait for every child to be gone (in namespaces mode the program's orphans are re-parented to the job
    loop): all were sent SIGKILL, and a job is over only when none of its processes is left."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


# ----------------------------------------------------------------------------------------------------------
# untrusted side


def _untrusted(sock_fd: int, program: str, limits: dict, workdir: str, uid: int | None,
               namespaces: bool) -> None:
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    os.setsid()
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
    # A credential change clears the parent-death signal, so it is set after setuid; then make sure the
    # job loop did not die before it was set.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(71)
    gc.unfreeze()
    if "random" in sys.modules:  # preloaded by the worker: do not hand every sample the same random state
        sys.modules["random"].seed()
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                       "LANG": "C.UTF-8"})
    if not namespaces:
        import _socket

        class _NoNetwork:
            def __init__(self, *a, **k):
                raise PermissionError("network access is disabled in the sandbox")

        socket.socket = _socket.socket = _NoNetwork  # type: ignore[misc]
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
        hello = {"loaded": False, "error": f"{type(e).__name__}: {e}"}
    _send(3, hello)
    if not hello["loaded"]:
        return
    while True:
        try:
            req = _recv(3)
        except (EOFError, OSError):
            os._exit(72)
        if req.get("op") == "finish":
            break
        try:
            if req["op"] == "get":
                value = g[req["name"]]
            else:
                target = _decode(req["target"], resolve)
                if req["op"] == "call":
                    value = target(*_decode(req["args"], resolve),
                                   **{k: _decode(v, resolve) for k, v in req["kwargs"].items()})
                elif req["op"] == "getattr":
                    value = getattr(target, req["name"])
                else:
                    raise ValueError(f"unknown op {req['op']!r}")
            reply = {"ok": _encode(value, handle)}
        except KeyError as e:
            reply = {"err": ["NameError", f"name {e} is not defined"]} if req.get("op") == "get" else \
                {"err": ["KeyError", str(e)]}
        except BaseException as e:  # noqa: BLE001
            reply = {"err": [type(e).__name__, str(e)[:1000]]}
        try:
            _send(3, reply)
        except (OSError, TypeError, ValueError):
            os._exit(73)
    # End as the interpreter would: wait for the program's non-daemon threads (a spinning one ends in a
    # timeout). os._exit, because this process is a fork deep inside the worker's call stack.
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    os._exit(0)


# ----------------------------------------------------------------------------------------------------------
# worker process


def _setup_namespaces(limits: dict) -> str | None:
    """Private network, mount and PID namespaces (the PID one applies to the next fork: the job loop), every
    mount read-only and nosuid but a private /tmp. None when refused."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return None
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making mounts private failed")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in mounts:
        if m in ("/proc", "/sys", "/dev") or m.startswith(("/proc/", "/sys/", "/dev/pts")):
            continue
        # Some mounts (e.g. locked ones inherited from a container runtime) refuse; /tmp is replaced below.
        libc.mount(None, m.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, None)
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, f"size={limits['tmpfs_mb']}m,mode=0755".encode()) != 0:
        raise OSError(ctypes.get_errno(), "mounting the private /tmp failed")
    _expose_interpreter(libc)
    probe = "/usr" if os.path.isdir("/usr") else "/"
    if os.access(probe, os.W_OK) and _writable(probe):
        raise OSError(f"{probe} is still writable after the read-only remount")
    return "/tmp"


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = (lambda x: x if x is None else x.encode())
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} on {target}: {os.strerror(e)}")


def _expose_interpreter(libc) -> None:
    """Make the interpreter's directories reachable by the unprivileged uid, inside this mount namespace only.

    A Python installed under a private directory (pyenv under /root, mode 0700) cannot import its standard
    library once the program has dropped to its own uid. For each such private ancestor, the subtrees the
    interpreter needs are bind-mounted back onto a read-only tmpfs that covers the ancestor, so the program
    sees the interpreter and nothing else of it (the rest of /root stays hidden)."""
    wanted = {os.path.realpath(p) for p in [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
              if p and os.path.isdir(p)}
    cover: dict[str, set[str]] = {}
    for path in sorted(wanted):
        parts = path.strip("/").split("/")
        for k in range(len(parts)):
            ancestor = "/" + "/".join(parts[:k])
            if not os.stat(ancestor).st_mode & 0o001:  # others may not traverse it
                cover.setdefault(ancestor, set()).add(parts[k])
                break
    for n, (ancestor, children) in enumerate(sorted(cover.items())):
        staged = []
        for child in sorted(children):
            stage = f"/tmp/.expose-{n}-{len(staged)}"
            os.mkdir(stage, 0o755)
            _mount(libc, os.path.join(ancestor, child), stage, None, MS_BIND | MS_REC)
            staged.append((child, stage))
        _mount(libc, "tmpfs", ancestor, "tmpfs", 0, "size=1m,mode=0711")
        for child, stage in staged:
            os.mkdir(os.path.join(ancestor, child), 0o755)
            _mount(libc, stage, os.path.join(ancestor, child), None, MS_BIND | MS_REC)
            _mount(libc, None, os.path.join(ancestor, child), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            libc.umount2(stage.encode(), 2)  # MNT_DETACH
            os.rmdir(stage)
        _mount(libc, None, ancestor, None, MS_REMOUNT | MS_RDONLY)


def _writable(directory: str) -> bool:
    try:
        fd = os.open(os.path.join(directory, f".sandbox-probe-{os.getpid()}"), os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(os.path.join(directory, f".sandbox-probe-{os.getpid()}"))
    return True


# Imported once by each worker so that the per-job forks find them loaded: a program's ``from typing import
# List`` then costs nothing instead of a few milliseconds of disk reads per sample.
_PRELOAD = ("resource", "tempfile", "typing", "math", "re", "collections", "itertools", "functools", "heapq",
            "bisect", "string", "hashlib", "random", "operator", "copy", "fractions", "statistics", "datetime")


def _worker_main(config: dict) -> None:
    import importlib
    import tempfile

    for name in _PRELOAD:
        importlib.import_module(name)
    limits, index = config["limits"], config["index"]
    root = _setup_namespaces(limits) if config["mode"] != "rlimits" else None
    namespaces = root is not None
    if config["mode"] == "namespaces" and not namespaces:
        _send(1, {"ready": False, "error": "namespaces refused (needs root / CAP_SYS_ADMIN)"})
        return
    if namespaces:
        # The job loop runs as PID 1 of the new PID namespace; this process only waits for it.
        pid = os.fork()
        if pid:
            os._exit(max(0, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    uid = config["base_uid"] + index if namespaces else None
    root = root or tempfile.mkdtemp(prefix="ragkit-sandbox-")
    _send(1, {"ready": True, "mode": "namespaces" if namespaces else "rlimits", "uid": uid})
    seq = 0
    while True:
        try:
            job = _recv(0)
        except EOFError:
            break
        seq += 1
        start = time.monotonic()
        workdir = os.path.join(root, f"job-{seq}")
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        try:
            result = _run_job(job, {**limits, **job.get("limits", {})}, workdir, uid, namespaces)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            result = {"status": "error", "tests": [False] * len(job.get("tests", [])),
                      "detail": f"sandbox error: {type(e).__name__}: {e}"}
        shutil.rmtree(workdir, ignore_errors=True)
        result["seconds"] = time.monotonic() - start
        _send(1, result)


# ----------------------------------------------------------------------------------------------------------
# the pool (trainer side)


class Sandbox:
    """A bounded pool of sandbox workers.

    Args:
        workers: processes checking jobs in parallel (each holds one job at a time).
        limits: per-job :class:`SandboxLimits` (a job may override fields with ``job["limits"]``).
        mode: "auto" (namespaces when allowed, else rlimits), "namespaces" (refuse to start without them)
            or "rlimits".
        base_uid: namespaces mode: worker ``i`` runs programs as uid/gid ``base_uid + i`` (unused ids).
    """

    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None, mode: str = "auto",
                 base_uid: int = 64000, python: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if mode not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"mode must be auto, namespaces or rlimits, got {mode!r}")
        self.limits, self.mode, self.base_uid = limits or SandboxLimits(), mode, base_uid
        self.python = python or sys.executable
        self._procs: list[subprocess.Popen | None] = [None] * workers
        self.isolation: list[dict] = [{} for _ in range(workers)]
        self._lock = threading.Lock()
        for i in range(workers):  # start now: a refused mode is an error at construction, not mid-training
            self._procs[i] = self._start(i)

    def _start(self, i: int) -> subprocess.Popen:
        config = {"limits": asdict(self.limits), "index": i, "mode": self.mode, "base_uid": self.base_uid}
        proc = subprocess.Popen([self.python, "-I", os.path.abspath(__file__), "--worker", json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                                cwd="/", close_fds=True, start_new_session=True)
        hello = _recv(proc.stdout.fileno(), time.monotonic() + 60)
        if not hello.get("ready"):
            proc.kill()
            raise RuntimeError(f"sandbox worker {i} refused to start: {hello.get('error')}")
        self.isolation[i] = {"mode": hello["mode"], "uid": hello["uid"]}
        return proc

    def _kill(self, i: int) -> None:
        proc, self._procs[i] = self._procs[i], None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and its job loop (started in a new session)
            except OSError:
                pass
            proc.wait()

    def _run_one(self, i: int, job: dict) -> ExecResult:
        if self._procs[i] is None or self._procs[i].poll() is not None:
            self._kill(i)
            self._procs[i] = self._start(i)
        proc = self._procs[i]
        wall = {**asdict(self.limits), **job.get("limits", {})}["wall_s"]
        try:
            _send(proc.stdin.fileno(), job)
            r = _recv(proc.stdout.fileno(), time.monotonic() + wall + 10.0)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            self._kill(i)
            return ExecResult(False, "error", [False] * len(job["tests"]), f"sandbox worker failed: {e}")
        return ExecResult(r["status"] == "passed", r["status"], [bool(t) for t in r["tests"]],
                          r.get("detail", ""), float(r.get("seconds", 0.0)))

    def run(self, jobs: Sequence[dict]) -> list[ExecResult]:
        """Check every job: ``{"program": str, "tests": [str, ...], "prelude": str (optional trusted
        imports for the tests), "limits": {...} (optional overrides)}``. Results in input order."""
        for k, job in enumerate(jobs):
            if not isinstance(job.get("program"), str) or not isinstance(job.get("tests"), list) or not job["tests"]:
                raise ValueError(f"job {k}: needs a 'program' string and a non-empty 'tests' list")
            for t in [job.get("prelude", ""), *job["tests"]]:
                ast.parse(t)  # a malformed test is a dataset error, not a failed sample
        results: list[ExecResult | None] = [None] * len(jobs)
        todo: queue.Queue = queue.Queue()
        for k in range(len(jobs)):
            todo.put(k)

        def loop(i):
            while True:
                try:
                    k = todo.get_nowait()
                except queue.Empty:
                    return
                results[k] = self._run_one(i, jobs[k])

        with self._lock:
            threads = [threading.Thread(target=loop, args=(i,), daemon=True)
                       for i in range(min(len(self._procs), len(jobs)))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for i in range(len(self._procs)):
            self._kill(i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# ----------------------------------------------------------------------------------------------------------
# code reward


def extract_code(response: str) -> str:
    """The program in a response: the LAST fenced block (```python ... ``` or ``` ... ```) when there is one,
    else the whole response. The last block, because a second attempt often quotes the first."""
    import re

    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", response, flags=re.DOTALL | re.IGNORECASE)
    return blocks[-1] if blocks else response


def build_job(code: str, example: dict) -> dict:
    """A sandbox job from extracted code and a task example (see ``rl.tasks``):

    * HumanEval style: ``{"prompt", "test", "entry_point"}``: program = prompt + code (the prompt holds the
      imports and helpers such as ``poly`` the tests use; a response with the whole function redefines it,
      a body-only completion continues it); one test, ``test + check(entry_point)``;
    * MBPP style: ``{"test_list": [asserts], "test_setup_code"?, "test_imports"?, "entry_point"?}``: each
      assert is a test; setup code builds objects from the program's classes, so it runs with the program;
      the entry point (default: the first function the first assert calls) may shadow a builtin (``sum``).
    """
    if "test" in example and "entry_point" in example:
        entry = example["entry_point"]
        defines = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry
                      for n in _safe_parse(code))
        program = example["prompt"] + ("\n" if defines else "") + code
        return {"program": program, "tests": [f"{example['test']}\ncheck({entry})\n"], "shadow": [entry]}
    tests = example.get("test_list") or example.get("tests")
    if not tests:
        raise KeyError("example needs 'test' + 'entry_point' (HumanEval) or 'test_list' (MBPP)")
    setup = example.get("test_setup_code") or ""
    entry = example.get("entry_point") or called_function(tests[0])
    return {"program": code + ("\n" + setup if setup.strip() else ""), "tests": list(tests),
            "prelude": "\n".join(example.get("test_imports") or []), "shadow": [entry] if entry else []}


def called_function(test: str) -> str | None:
    """The name of the first function an assert calls (``assert (max_height(root)) == 3`` -> max_height)."""
    for node in _safe_parse(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    return None


def _safe_parse(code: str) -> list:
    try:
        return list(ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError):
        return []


_DEFAULT: Sandbox | None = None


def default_sandbox() -> Sandbox:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Sandbox(workers=max(1, min(4, os.cpu_count() or 1)))
    return _DEFAULT


def code_reward(responses: Sequence[str], examples: Sequence[dict], sandbox: Sandbox | None = None) -> list[float]:
    """r = 1 if the program in the response (last fenced block, else the whole text) passes EVERY test of its
    example in the sandbox, else 0. The same check is the pass@1 metric of evaluation."""
    if len(responses) != len(examples):
        raise ValueError(f"code_reward: {len(responses)} responses but {len(examples)} examples")
    jobs = [build_job(extract_code(r), ex) for r, ex in zip(responses, examples)]
    return [1.0 if res.passed else 0.0 for res in (sandbox or default_sandbox()).run(jobs)]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker_main(json.loads(sys.argv[2]))
