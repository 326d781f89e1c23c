"""Run untrusted programs against unit tests, many in parallel, with the oracle outside the program.

``code_reward(responses, examples)`` is the reward of the code tasks and their pass@1 metric. Its parts:

* :class:`Sandbox` (this file, in the trainer): a pool of ``workers`` long-lived worker processes, each with a
  uid of its own from a range locked for this pool alone (``/run/ragkit-sandbox/uids-*.lock``), so two pools
  never share a uid and hence never share an ``RLIMIT_NPROC`` count;
* the worker (``tasks/sandbox_worker.py``, root in the namespaces mode): the trusted job loop. It holds the tests
  and runs them (``tasks/sandbox_trusted.py``) against proxies of the program's entry point;
* the zygote and the program process (``tasks/sandbox_zygote.py``): a fresh interpreter that never received a
  test, forking one process per job that runs the program as the worker's uid, in the worker's jail
  (``tasks/sandbox_jail.py``: empty root, no network, own IPC and PID namespaces, seccomp) and cgroup
  (``tasks/sandbox_cgroup.py``: memory, process count and CPU of the whole tree).

Values cross between them as tagged JSON (``tasks/sandbox_codec.py``). ``docs/security.md`` states the threat model
and what each mode guarantees. Every failure of a sample, in the sandbox or in building its job, is reward 0 for
that sample, counted in :data:`REWARD_STATS` and logged; only malformed *examples* (a dataset error) raise.
"""

from __future__ import annotations

import ast
import atexit
import collections
import fcntl
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tasks import sandbox_cgroup
from tasks import sandbox_codec as codec

log = logging.getLogger(__name__)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
UIDS_PER_POOL, FIRST_UID, POOL_SLOTS = 256, 200_000, 4096
RESULT_LIMIT = 1 << 20

# Counts of code_reward samples by outcome ("passed", "failed", "timeout", "error", "exception"): a trainer logs
# it (e.g. ``self.log_dict({f"sandbox/{k}": v for k, v in REWARD_STATS.items()})``); "exception" counts samples
# whose job could not even be built or run (reward 0 too).
REWARD_STATS: collections.Counter = collections.Counter()


@dataclass
class SandboxLimits:
    """Per-job limits. ``wall_s`` covers loading the program, every test and the program's own exit."""

    cpu_s: int = 5  # CPU time of the job's whole process tree (per process too: RLIMIT_CPU)
    wall_s: float = 10.0
    memory_mb: int = 1024  # the job's tree (cgroup) and each process (RLIMIT_AS)
    fsize_mb: int = 16  # largest file it may write
    nproc: int = 16  # processes + threads of the job (cgroup pids.max; RLIMIT_NPROC of its uid)
    nofile: int = 64
    tmpfs_mb: int = 256  # namespaces mode: the worker's /tmp, which holds its job directories
    reply_kb: int = 1024  # largest reply of the program the job loop reads (larger: the program failed)
    trusted_memory_mb: int = 2048  # RLIMIT_AS of the job loop itself


@dataclass
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error" (the sandbox itself failed)
    tests: list[bool] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


def _lock_uid_range(base_uid: int | None) -> tuple[int, int]:
    """(first uid, lock fd) of a range of UIDS_PER_POOL uids no other pool on this host holds (flock: released
    when this process dies)."""
    d = "/run/ragkit-sandbox" if os.geteuid() == 0 and os.path.isdir("/run") else \
        os.path.join(tempfile.gettempdir(), f"ragkit-sandbox-{os.geteuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    bases = [base_uid] if base_uid is not None else [FIRST_UID + k * UIDS_PER_POOL for k in range(POOL_SLOTS)]
    for base in bases:
        fd = os.open(os.path.join(d, f"uids-{base}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return base, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"no free sandbox uid range (base_uid={base_uid}): another pool holds it")


class Sandbox:
    """A bounded pool of sandbox workers.

    Args:
        workers: processes checking jobs in parallel (each holds one job at a time), at most 256.
        limits: per-job :class:`SandboxLimits` (a job may override fields with ``job["limits"]``).
        mode: "auto" (namespaces when allowed, else rlimits), "namespaces" (refuse to start without them)
            or "rlimits".
        base_uid: first uid of this pool's range (default: the first free range from 200000 on, 256 each).
    """

    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None, mode: str = "auto",
                 base_uid: int | None = None, python: str | None = None):
        if not 1 <= workers <= UIDS_PER_POOL:
            raise ValueError(f"workers must be in 1..{UIDS_PER_POOL}, got {workers}")
        if mode not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"mode must be auto, namespaces or rlimits, got {mode!r}")
        self.limits, self.mode = limits or SandboxLimits(), mode
        self.base_uid, self._uid_lock = _lock_uid_range(base_uid)
        self.python = python or sys.executable
        self._procs: list[subprocess.Popen | None] = [None] * workers
        self._scratch: list[str | None] = [None] * workers
        self._stderr: list = [None] * workers  # each worker's (and zygote's) stderr: its last words if it dies
        self.isolation: list[dict] = [{} for _ in range(workers)]
        self._lock = threading.Lock()
        for i in range(workers):  # start now: a refused mode is an error at construction, not mid-training
            self._procs[i] = self._start(i)

    def _cgroup(self, i: int) -> str:
        return f"uid{self.base_uid + i}"

    def _start(self, i: int) -> subprocess.Popen:
        self._scratch[i] = tempfile.mkdtemp(prefix="ragkit-sandbox-")  # job directories without a jail
        os.chmod(self._scratch[i], 0o711)
        config = {"limits": asdict(self.limits), "uid": self.base_uid + i, "mode": self.mode,
                  "cgroup": self._cgroup(i), "scratch": self._scratch[i]}
        stderr = self._stderr[i] = tempfile.TemporaryFile()  # shown if the worker fails to start or dies
        proc = subprocess.Popen([self.python, "-I", WORKER, "--worker", json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                                cwd="/", close_fds=True, start_new_session=True)
        try:
            hello = codec.recv(proc.stdout.fileno(), time.monotonic() + 60, RESULT_LIMIT)
        except (EOFError, TimeoutError, ValueError, OSError) as e:
            hello = {"error": f"{type(e).__name__}: {e}"}
        if not hello.get("ready"):
            self._procs[i] = proc
            try:
                proc.wait(timeout=1.0)  # let it finish its last words
            except subprocess.TimeoutExpired:
                pass
            tail = self._last_words(i, 2000)
            self._kill(i)
            raise RuntimeError(f"sandbox worker {i} refused to start: {hello.get('error')}"
                               + (f"\nworker stderr:\n{tail}" if tail else ""))
        self.isolation[i] = {k: hello[k] for k in ("mode", "uid", "cgroup", "seccomp")}
        return proc

    def _last_words(self, i: int, chars: int) -> str:
        """The tail of worker ``i``'s stderr (a traceback, the zygote's error)."""
        f = self._stderr[i]
        if f is None:
            return ""
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * chars))
        return f.read().decode(errors="replace").strip()[-chars:]

    def _death(self, i: int) -> str:
        """How worker ``i`` ended, for a job it did not answer: its exit status (a signal by name: SIGKILL from
        the OOM killer, say) and the tail of its stderr."""
        proc = self._procs[i]
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "; the worker is still running"
        how = f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"exit status {code}"
        tail = self._last_words(i, 300)
        return f"; worker {how}" + (f"; its stderr: {tail}" if tail else "")

    def _kill(self, i: int) -> None:
        proc, self._procs[i] = self._procs[i], None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and its zygote (then the zygote's namespace)
            except OSError:
                pass
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                f.close()
            sandbox_cgroup.remove(self._cgroup(i))
        if self._scratch[i] is not None:
            shutil.rmtree(self._scratch[i], ignore_errors=True)
            self._scratch[i] = None
        if self._stderr[i] is not None:
            self._stderr[i].close()
            self._stderr[i] = None

    def _run_one(self, i: int, job: dict) -> ExecResult:
        if self._procs[i] is None or self._procs[i].poll() is not None:
            self._kill(i)
            self._procs[i] = self._start(i)
        proc = self._procs[i]
        wall = {**asdict(self.limits), **job.get("limits", {})}["wall_s"]
        try:
            codec.send(proc.stdin.fileno(), job)
            r = codec.recv(proc.stdout.fileno(), time.monotonic() + wall + 15.0, RESULT_LIMIT)
            return ExecResult(r["status"] == "passed", str(r["status"]), [t is True for t in r["tests"]],
                              str(r.get("detail", "")), float(r.get("seconds", 0.0)))
        except Exception as e:  # noqa: BLE001 - the worker is in an unknown state: replace it
            died = self._death(i) if isinstance(e, EOFError) else ""
            self._kill(i)
            return ExecResult(False, "error", [False] * len(job["tests"]), f"sandbox worker failed: {e}{died}")

    def run(self, jobs: Sequence[dict]) -> list[ExecResult]:
        """Check every job: ``{"program": str, "tests": [str, ...], "prelude": str (optional trusted imports),
        "trusted": str (optional trusted helper code the tests call), "shadow": [entry point names],
        "limits": {...} (optional overrides)}``. Results in input order."""
        for k, job in enumerate(jobs):
            if not isinstance(job.get("program"), str) or not isinstance(job.get("tests"), list) or not job["tests"]:
                raise ValueError(f"job {k}: needs a 'program' string and a non-empty 'tests' list")
            for t in [job.get("prelude", ""), job.get("trusted", ""), *job["tests"]]:
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
                try:
                    results[k] = self._run_one(i, jobs[k])
                except Exception as e:  # noqa: BLE001 - e.g. a worker that cannot be restarted
                    results[k] = ExecResult(False, "error", [False] * len(jobs[k]["tests"]), f"{e}")

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
        if self._uid_lock is not None:
            os.close(self._uid_lock)
            self._uid_lock = None

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
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", response, flags=re.DOTALL | re.IGNORECASE)
    return blocks[-1] if blocks else response


def build_job(code: str, example: dict) -> dict:
    """A sandbox job from extracted code and a task example (see ``tasks.loaders``):

    * HumanEval style: ``{"prompt", "test", "entry_point"}``: program = prompt + code (a response with the whole
      function redefines it, a body-only completion continues it); one test, ``test + check(entry_point)``; the
      prompt is also the tests' *trusted* code, so helpers such as ``poly`` come from the task, not the program;
    * MBPP style: ``{"test_list": [asserts], "test_setup_code"?, "test_imports"?, "entry_point"?}``: each
      assert is a test; setup code builds objects from the program's classes, so it runs with the program;
      the entry point (default: the first non-builtin function the first assert calls) may shadow a builtin.
    """
    if "test" in example and "entry_point" in example:
        entry = example["entry_point"]
        defines = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry
                      for n in _safe_parse(code))
        program = example["prompt"] + ("\n" if defines else "") + code
        return {"program": program, "tests": [f"{example['test']}\ncheck({entry})\n"], "shadow": [entry],
                "trusted": example["prompt"]}
    tests = example.get("test_list") or example.get("tests")
    if not tests:
        raise KeyError("example needs 'test' + 'entry_point' (HumanEval) or 'test_list' (MBPP)")
    setup = example.get("test_setup_code") or ""
    entry = example.get("entry_point") or called_function(tests[0])
    return {"program": code + ("\n" + setup if setup.strip() else ""), "tests": list(tests),
            "prelude": "\n".join(example.get("test_imports") or []), "shadow": [entry] if entry else []}


def called_function(test: str) -> str | None:
    """The function an assert tests: the first called name that is not a builtin, else the first called name
    (``assert set(similar_elements(a, b)) == ...`` -> similar_elements; ``assert sum(3, 4) == 12`` -> sum)."""
    import builtins

    calls = sorted(((n.lineno, n.col_offset), n.func.id) for n in _safe_parse(test)
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Name))
    names = [name for _, name in calls]
    return next((n for n in names if not hasattr(builtins, n)), names[0] if names else None)


def _safe_parse(code: str) -> list:
    try:
        return list(ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []


_DEFAULT: Sandbox | None = None


def default_sandbox() -> Sandbox:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Sandbox(workers=max(1, min(4, os.cpu_count() or 1)))
        atexit.register(_DEFAULT.close)  # workers, cgroups and scratch directories go with the trainer
    return _DEFAULT


def code_reward(responses: Sequence[str], examples: Sequence[dict], sandbox: Sandbox | None = None) -> list[float]:
    """r = 1 if the program in the response (last fenced block, else the whole text) passes EVERY test of its
    example in the sandbox, else 0. The same check is the pass@1 metric of evaluation. A sample whose job
    cannot be built or run gets 0 (counted in ``REWARD_STATS["exception"]`` and logged), never an exception."""
    if len(responses) != len(examples):
        raise ValueError(f"code_reward: {len(responses)} responses but {len(examples)} examples")
    rewards = [0.0] * len(responses)
    jobs, where = [], []
    for k, (r, ex) in enumerate(zip(responses, examples)):
        try:
            jobs.append(build_job(extract_code(r), ex))
            where.append(k)
        except KeyError as e:
            raise ValueError(f"code_reward: example {k} is malformed: {e}") from None
        except Exception as e:  # noqa: BLE001 - MemoryError/RecursionError of a hostile response, ...
            _count_exception(k, e)
    results = []
    try:
        results = (sandbox or default_sandbox()).run(jobs)
    except (SyntaxError, ValueError):
        raise  # malformed tests of the dataset
    except Exception as e:  # noqa: BLE001 - the sandbox itself failed: every sample of this call gets 0
        for k in where:
            _count_exception(k, e)
    for k, res in zip(where, results):
        REWARD_STATS[res.status] += 1
        rewards[k] = 1.0 if res.passed else 0.0
    return rewards


def _count_exception(k: int, e: BaseException) -> None:
    REWARD_STATS["exception"] += 1
    log.warning("code_reward: sample %d gets 0: %s: %s", k, type(e).__name__, str(e)[:200])

