"""The trusted side of a sandbox job: the tests run here, in the job loop, against proxies of the program.

The test code (HumanEval's ``check``, MBPP's asserts) executes in a namespace built from trusted code only: the
job's ``prelude`` (MBPP ``test_imports``), its ``trusted`` code (HumanEval's prompt: imports and helpers such
as ``poly``, ``encode_cyclic``, ``encode_shift``) and this interpreter's builtins. A name the tests read is
taken from the program only when it is the entry point (``shadow``: it may be called ``sum``) or when the
trusted side does not define it (a class the task asks for, e.g. MBPP/601's ``Pair``, or an object MBPP's
setup code builds); a program that defines ``poly``, ``set`` or ``range`` changes nothing the tests see.

A program's value arrives as plain data (``sandbox_codec``) or as a :class:`Remote` that can be called, have
attributes read or be passed back, but refuses ``==``, ``<``, ``bool``, ``hash``, iteration and arithmetic, so a
test that compares it fails. Replies are capped at the job's ``reply_kb`` (checked from the header, before
reading); the tests run under a SIGALRM at the job's deadline, so trusted code cannot outlive the wall time.

What this cannot express (see docs/security.md): a test that inspects how the program mutated an argument
(arguments are copies), identity (``is``) of returned objects, or iteration over a generator the program
returns; no shipped HumanEval or MBPP test needs them (the canonical solutions pass, see the tests).
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import signal
import time
from collections.abc import Sequence

import sandbox_codec as codec
import sandbox_prefetch


class RemoteError(Exception):
    """An exception raised inside the untrusted program whose type is not a builtin exception."""


class UntrustedValue(TypeError):
    """A test tried to compare, hash, test the truth of or iterate an object built by the program."""


class Deadline(BaseException):
    """The job's wall time ran out while the trusted side was running a test."""


# Builtin exceptions the program may raise through the proxy; not StopIteration/StopAsyncIteration, which
# would end a trusted ``map(candidate, ...)`` or ``filter`` early, as if there were nothing left to check.
_BUILTIN_EXC = {n: e for n, e in vars(builtins).items() if isinstance(e, type) and issubclass(e, Exception)
                and not issubclass(e, (StopIteration, StopAsyncIteration))}


class Channel:
    def __init__(self, fd: int, deadline: float, reply_limit: int):
        self.fd, self.deadline, self.limit, self.dead = fd, deadline, reply_limit, None
        self.prefetched: dict[str, list] = {}  # sandbox_prefetch.key -> replies not yet used, in order
        self.named: dict[str, str] = {}  # json of a Remote's ref -> the program name it was got as

    def store(self, calls: list[dict], replies) -> None:
        if type(replies) is not list or len(replies) > len(calls):  # fewer: the rest are made live
            raise RemoteError("malformed prefetched replies")
        for call, reply in zip(calls, replies):
            k = sandbox_prefetch.key(call["name"], call["args"], call["kwargs"])
            self.prefetched.setdefault(k, []).append(reply)

    def receive(self):
        try:
            reply = codec.recv(self.fd, self.deadline, self.limit)
            if type(reply) is not dict:
                raise ValueError("malformed reply")
            return reply
        except Exception as e:  # noqa: BLE001 - any transport or decoding failure ends the program's turn
            self.dead = f"{type(e).__name__}: {str(e)[:200]}"
            raise RemoteError(f"program is gone ({self.dead})") from None

    def request(self, op: str, **kw):
        if self.dead:
            raise RemoteError(f"program is gone ({self.dead})")
        if op == "call" and self.prefetched:
            name = self.named.get(json.dumps(kw["target"], sort_keys=True))
            stored = self.prefetched.get(sandbox_prefetch.key(name, kw["args"], kw["kwargs"])) if name else None
            if stored:
                return self.unpack(stored.pop(0))
        try:
            codec.send(self.fd, {"op": op, **kw})
        except OSError as e:
            self.dead = f"{type(e).__name__}: {e}"
            raise RemoteError(f"program is gone ({self.dead})") from None
        return self.unpack(self.receive())

    def unpack(self, reply):
        """The value of a reply ``{"ok": value}``, or the program's exception ``{"err": [type, message]}``."""
        if type(reply) is not dict:
            raise RemoteError("malformed reply")
        if "err" in reply:
            err = reply["err"] if type(reply["err"]) is list else []
            name, msg = (err + ["", ""])[:2]
            raise _BUILTIN_EXC.get(str(name)[:100], RemoteError)(str(msg)[:1000])
        try:
            return codec.decode(reply.get("ok"), self.ref)
        except Exception as e:  # noqa: BLE001 - malformed or hostile value
            self.dead = f"undecodable reply: {type(e).__name__}"
            raise RemoteError(self.dead) from None

    def ref(self, tag, key):
        return Remote(self, {tag: key})

    def arg(self, v):
        def handle(x):
            if type(x) is Remote and object.__getattribute__(x, "_ch") is self:
                return object.__getattribute__(x, "_ref")
            raise TypeError(f"cannot pass a {type(x).__name__} to the program")
        return codec.encode(v, handle)


class Remote:
    """An object that lives in the untrusted process: it can be called, its attributes read, and it can be
    passed back as an argument; nothing else (``==`` on it raises, so a lying ``__eq__`` fails the test)."""

    __slots__ = ("_ch", "_ref")

    def __init__(self, ch: Channel, ref: dict):
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


def free_names(codes: Sequence[str]) -> set[str]:
    """Names the code reads but never binds."""
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
    return loads - stores


@functools.lru_cache(maxsize=1024)
def _compiled(code: str, name: str):
    return compile(code, name, "exec")


@functools.lru_cache(maxsize=1024)
def _free_names(tests: tuple) -> frozenset:
    return frozenset(free_names(tests))


@functools.lru_cache(maxsize=1024)
def _literal_calls(tests: tuple, names: tuple) -> str:
    return json.dumps(sandbox_prefetch.literal_calls(tests, names))


def program_names(tests: Sequence[str], trusted: dict, shadow: Sequence[str]) -> list[str]:
    """The names the tests take from the program: the entry point(s) in ``shadow``, and free names that
    neither the trusted namespace nor the builtins define."""
    return sorted(n for n in _free_names(tuple(tests))
                  if n in shadow or (n not in trusted and not hasattr(builtins, n)))


WATCH_S = 0.05  # how often the job's deadline and its tree's CPU time are checked while tests run


class Watch:
    """The SIGALRM handler of a test run: raises :class:`Deadline` once the job's wall time or its tree's CPU
    time is over, at most once, and never after :meth:`disarm` (so neither the handler of that Deadline nor
    the cleanup after it can be interrupted by another one)."""

    def __init__(self, deadline: float, over_cpu):
        self.deadline, self.over_cpu, self.live = deadline, over_cpu, True

    def __call__(self, signum, frame):
        if not self.live:
            return
        if time.monotonic() >= self.deadline:
            self.live = False
            raise Deadline("wall time exceeded while testing")
        if self.over_cpu():
            self.live = False
            raise Deadline("CPU time of the job's processes exceeded while testing")

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.live = False


def run_tests(fd: int, job: dict, deadline: float, reply_limit: int,
              over_cpu=lambda: False) -> tuple[list[bool], str]:
    """Send the program, build the trusted namespace, run each test; (per-test pass, first failure).
    Never raises :class:`Deadline`: the alarm may fire anywhere, also while another error is being handled
    (a worker that let it escape died and cost the job an "error" instead of its timeout)."""
    fail = [False] * len(job["tests"])
    watch = Watch(deadline, over_cpu)
    old = signal.signal(signal.SIGALRM, watch)
    signal.setitimer(signal.ITIMER_REAL, WATCH_S, WATCH_S)
    try:
        try:
            return _run_tests(Channel(fd, deadline, reply_limit), fd, job, reply_limit, fail)
        except (RemoteError, OSError) as e:
            return fail, f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            watch.disarm()
    except Deadline as e:  # raised at most once: in the tests, in the handler above or before the disarm
        return fail, f"Deadline: {e}"
    finally:
        watch.disarm()
        signal.signal(signal.SIGALRM, old)


def _run_tests(ch: Channel, fd: int, job: dict, reply_limit: int, fail: list[bool]) -> tuple[list[bool], str]:
    ns: dict = {"__name__": "__test__"}
    # The same task comes back for every sample of a group: its code is compiled and parsed once.
    exec(_compiled(job.get("prelude", ""), "<prelude>"), ns)
    exec(_compiled(job.get("trusted", ""), "<trusted>"), ns)
    names = program_names(job["tests"], ns, job.get("shadow", ()))
    calls = json.loads(_literal_calls(tuple(job["tests"]), tuple(names)))
    # one round trip: load the program, get the names, make the literal calls
    codec.send(fd, {"program": job["program"], "get": names, "calls": calls, "budget": reply_limit // 2})
    hello = ch.receive()
    if hello.get("loaded") is not True:
        return fail, f"program failed to load: {str(hello.get('error'))[:500]}"
    ch.store(calls, hello.get("calls"))
    got = hello.get("got")
    for name in names:
        try:
            ns[name] = ch.unpack(got.get(name) if type(got) is dict else None)
            if type(ns[name]) is Remote:
                ch.named[json.dumps(object.__getattribute__(ns[name], "_ref"), sort_keys=True)] = name
        except NameError:
            ns.pop(name, None)  # the test that uses it fails with NameError
        except Exception as e:  # noqa: BLE001 - the program's own error while looking the name up
            return fail, f"getting {name!r}: {type(e).__name__}: {str(e)[:300]}"
    results, detail = [], ""
    for i, test in enumerate(job["tests"]):
        try:
            exec(_compiled(test, f"<test {i}>"), ns)
            results.append(True)
        except Exception as e:  # noqa: BLE001 - any failure of a test is a failed test
            results.append(False)
            detail = detail or f"test {i}: {type(e).__name__}: {str(e)[:300]}"
    try:
        codec.send(fd, {"op": "finish"})
    except OSError:
        pass
    return results, detail
