"""The code sandbox: hostile programs end "failed" within their limits and leave the test process, the
machine and the other samples of the batch untouched; HumanEval/MBPP reference solutions pass."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tasks.sandbox import Sandbox, SandboxLimits, build_job, code_reward, extract_code

ROOT = Path(__file__).resolve().parent.parent
LIMITS = SandboxLimits(cpu_s=1, wall_s=3.0, memory_mb=512, nproc=16)
SECRET = "hunter2-do-not-leak"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-5, 5) == 0"]
GOOD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def outside():
    """A world-writable directory outside /tmp (the workers get a private /tmp) holding a file to protect."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-outside-", dir="/var/tmp"))
    d.chmod(0o777)
    keep = d / "keep.txt"
    keep.write_text("precious")
    keep.chmod(0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox():
    old = os.environ.get("RAGKIT_SANDBOX_SECRET")
    os.environ["RAGKIT_SANDBOX_SECRET"] = SECRET  # the trainer's environment holds a secret
    try:
        with Sandbox(workers=2, limits=LIMITS) as sb:
            sb.run([{"program": GOOD, "tests": ADD_TESTS}])
            yield sb
    finally:
        if old is None:
            os.environ.pop("RAGKIT_SANDBOX_SECRET", None)
        else:
            os.environ["RAGKIT_SANDBOX_SECRET"] = old


def sandbox_processes(uids) -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        uid_line = next((line for line in text.splitlines() if line.startswith("Uid:")), "")
        if uid_line and int(uid_line.split()[1]) in uids:
            pids.append(int(status.parent.name))
    return pids


def test_isolation_mode_is_namespaces(sandbox):
    # The project's machines run as root: every guarantee of the namespaces mode must be in force.
    assert [w["mode"] for w in sandbox.isolation] == ["namespaces", "namespaces"]


def test_good_program_passes_and_wrong_one_fails(sandbox):
    r = sandbox.run([{"program": GOOD, "tests": ADD_TESTS},
                     {"program": "def add(a, b):\n    return a - b\n", "tests": ADD_TESTS},
                     {"program": "def add(a, b):\n    return 3\n", "tests": ADD_TESTS}])
    assert [x.passed for x in r] == [True, False, False]
    assert r[0].tests == [True, True] and r[2].tests == [True, False]


def hostile_programs(outside: Path, server_port: int) -> dict[str, str]:
    tail = "\n" + GOOD  # every program also defines a correct add(): only the attack can make it fail
    return {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + tail,
        "infinite_loop": "def add(a, b):\n    while True:\n        pass\n",
        "thread_spin": "import threading\ndef spin():\n    while True:\n        pass\n"
                       "threading.Thread(target=spin).start()\n" + tail,
        "memory_blowup": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n" + tail,
        "memory_in_call": "def add(a, b):\n    return len(bytearray(8 * 1024 ** 3))\n",
        "write_outside": f"open({str(outside / 'pwned.txt')!r}, 'w').write('x')\n" + tail,
        "write_outside_keep": f"open({str(outside / 'keep.txt')!r}, 'w').write('overwritten')\n" + tail,
        "delete_files": f"import os\nos.remove({str(outside / 'keep.txt')!r})\n" + tail,
        "rmtree": f"import shutil\nshutil.rmtree({str(outside)!r})\n" + tail,
        "socket": f"import socket\ns = socket.create_connection(('127.0.0.1', {server_port}), timeout=1)\n"
                  "s.sendall(b'leak')\n" + tail,
        "env_secret": "import os\nSECRET = os.environ.get('RAGKIT_SANDBOX_SECRET', '')\n"
                      f"def add(a, b):\n    return a + b if SECRET == {SECRET!r} else None\n",
        "parent_environ": f"DATA = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
                          f"def add(a, b):\n    return a + b if b'RAGKIT_SANDBOX_SECRET' in DATA else None\n",
        "sys_exit_before_tests": "import sys\nsys.exit(0)\n" + tail,
        "os_exit_before_tests": "import os\nos._exit(0)\n" + tail,
        "exit_in_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + tail,
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + tail,
        "eq_always_true": "class Liar:\n    def __eq__(self, other):\n        return True\n"
                          "    __hash__ = object.__hash__\ndef add(a, b):\n    return Liar()\n",
        "int_subclass_liar": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                             "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
        "fake_passed_output": "import sys\nprint('passed')\nprint('OK')\nsys.stdout.write('2 passed in 0.01s\\n')\n"
                              "def add(a, b):\n    return 0\n",
        "forged_protocol": "import json, os, struct\n"
                           "for m in ({'loaded': True}, {'ok': 3}, {'ok': 0}):\n"
                           "    b = json.dumps(m).encode()\n    os.write(3, struct.pack('>I', len(b)) + b)\n"
                           "def add(a, b):\n    return 0\n",
        "patch_builtins": "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n"
                          "def add(a, b):\n    return 0\n",
    }


def test_hostile_programs_all_fail_within_limits_and_leave_everything_untouched(sandbox, outside):
    received = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(100))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    hostile = hostile_programs(outside, server.getsockname()[1])
    jobs, names = [], []
    for name, program in hostile.items():  # interleave good samples: they must pass in the same batch
        jobs += [{"program": program, "tests": ADD_TESTS}, {"program": GOOD, "tests": ADD_TESTS}]
        names += [name, "good"]
    start = time.monotonic()
    results = sandbox.run(jobs)
    elapsed = time.monotonic() - start
    stop.set()
    t.join()
    server.close()

    for name, r in zip(names, results):
        if name == "good":
            assert r.passed, r
        else:
            assert not r.passed and r.status in ("failed", "timeout"), (name, r)
            assert r.seconds <= LIMITS.wall_s + 1.5, (name, r)
    by_name = {n: r for n, r in zip(names, results) if n != "good"}
    assert by_name["infinite_loop"].status == "timeout"
    assert by_name["thread_spin"].status == "timeout"
    assert "UntrustedValue" in by_name["eq_always_true"].detail
    assert "UntrustedValue" in by_name["int_subclass_liar"].detail
    # the host's tree is not in the jail at all (it used to be there read-only)
    assert "No such file or directory" in by_name["write_outside"].detail
    # the test process, the machine and the pool are untouched
    assert received == []
    assert (outside / "keep.txt").read_text() == "precious" and not (outside / "pwned.txt").exists()
    uids = {w["uid"] for w in sandbox.isolation}
    assert sandbox_processes(uids) == []
    assert elapsed < len(jobs) * (LIMITS.wall_s + 1.5) / 2 + 10  # two at a time, nothing hung
    again = sandbox.run([{"program": GOOD, "tests": ADD_TESTS}] * 4)
    assert all(r.passed for r in again)


def test_orphans_are_killed_after_the_program_exits(sandbox):
    # The program forks a child that detaches (new session) and would live on; it must not survive the job.
    prog = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n" + GOOD)
    r = sandbox.run([{"program": prog, "tests": ADD_TESTS}])[0]
    assert r.passed  # forking is allowed; leaving processes behind is not
    time.sleep(0.2)
    assert sandbox_processes({w["uid"] for w in sandbox.isolation}) == []


def test_timeout_kills_the_whole_process_group_tree(sandbox):
    prog = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\n"
            "def add(a, b):\n    time.sleep(60)\n")
    r = sandbox.run([{"program": prog, "tests": ADD_TESTS, "limits": {"wall_s": 1.0}}])[0]
    assert r.status == "timeout" and r.seconds < 2.5
    time.sleep(0.2)
    assert sandbox_processes({w["uid"] for w in sandbox.isolation}) == []


def test_values_are_compared_in_the_trusted_process(sandbox):
    prog = ("import collections, re\nclass Node:\n    def __init__(self, v):\n        self.v = v\n"
            "def count(xs):\n    return collections.Counter(xs)\n"
            "def match(s):\n    return re.search('a(b+)', s)\n"
            "def value(n):\n    return n.v\n"
            "def kinds(x):\n    return (type(x), {1, 2}, frozenset([3]), b'x', 1 + 2j, None)\n")
    tests = ["assert count('aab') == {'a': 2, 'b': 1}", "assert match('xabb')", "assert not match('xyz')",
             "assert match('abbb').group(1) == 'bbb'", "assert value(Node(7)) == 7",
             "assert kinds(3) == (int, {1, 2}, frozenset([3]), b'x', 1 + 2j, None)"]
    r = sandbox.run([{"program": prog, "tests": tests}])[0]
    assert r.tests == [True] * len(tests), r
    bad = sandbox.run([{"program": prog, "tests": ["assert Node(1) == Node(1)"]}])[0]
    assert not bad.passed and "UntrustedValue" in bad.detail


def test_program_cannot_rebind_builtins_used_by_the_tests(sandbox):
    # A program that empties the test's loop by rebinding range must not pass; the entry point itself may
    # shadow a builtin (MBPP task 126 asks for a function called sum).
    rigged = "def range(*a):\n    return []\ndef f(x):\n    return 0\n"
    r = sandbox.run([{"program": rigged, "tests": ["for i in range(3):\n    assert f(i) == i + 1"]},
                     build_job("def sum(a, b):\n    return a * b\n", {"test_list": ["assert sum(3, 4) == 12"]})])
    assert [x.passed for x in r] == [False, True]


def test_extract_code_takes_last_fenced_block():
    text = "First try:\n```python\ndef f():\n    return 1\n```\nFixed:\n```python\ndef f():\n    return 2\n```\n"
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def g(): pass") == "def g(): pass"


def load_humaneval():
    with gzip.open(ROOT / "data/humaneval/HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_humaneval_canonical_solutions_all_pass_and_empty_functions_fail(sandbox):
    problems = load_humaneval()
    assert len(problems) == 164
    with Sandbox(workers=2) as sb:  # default limits
        full = code_reward([p["prompt"] + p["canonical_solution"] for p in problems], problems, sandbox=sb)
        fenced = code_reward(["Here:\n```python\n" + p["prompt"] + p["canonical_solution"] + "```"
                              for p in problems[:20]], problems[:20], sandbox=sb)
        empty = code_reward([p["prompt"] + "    pass\n" for p in problems], problems, sandbox=sb)
    assert full == [1.0] * 164
    assert fenced == [1.0] * 20
    assert empty == [0.0] * 164


def load_mbpp():
    with gzip.open(ROOT / "data/mbpp/mbpp.jsonl.gz", "rt") as f:
        full = [json.loads(line) for line in f]
    with gzip.open(ROOT / "data/mbpp/sanitized-mbpp.json.gz", "rt") as f:
        sanitized = json.load(f)
    return full, sanitized


# Reference solutions that fail under plain CPython too (shown below), not because of the sandbox:
# 596 expects sys.getsizeof values of an older CPython; 642 depends on set iteration order (upstream fixed
# both in 2022, see data/mbpp/PROVENANCE.md).
MBPP_BROKEN = {596, 642}


def plain_exec_passes(row) -> bool:
    program = row["code"] + "\n" + row.get("test_setup_code", "") + "\n" + "\n".join(row["test_list"]) + "\n"
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
    return proc.returncode == 0


def test_mbpp_reference_solutions_sample(sandbox):
    full, sanitized = load_mbpp()
    sample = [r for r in full if r["task_id"] % 25 == 0 or r["task_id"] in (367, 927, 126, 533, 737)]
    r = code_reward([row["code"] for row in sample], sample, sandbox=sandbox)
    assert r == [1.0] * len(sample)
    wrong = code_reward(["def unrelated():\n    return 1\n"] * 5, sample[:5], sandbox=sandbox)
    assert wrong == [0.0] * 5


@pytest.mark.slow
def test_mbpp_reference_solutions_all():
    full, sanitized = load_mbpp()
    with Sandbox(workers=2, limits=SandboxLimits(cpu_s=20, wall_s=40)) as sb:
        r_full = code_reward([row["code"] for row in full], full, sandbox=sb)
        r_san = code_reward([row["code"] for row in sanitized], sanitized, sandbox=sb)
    failed = {row["task_id"] for row, x in zip(full, r_full) if x != 1.0}
    failed |= {row["task_id"] for row, x in zip(sanitized, r_san) if x != 1.0}
    assert failed <= MBPP_BROKEN, sorted(failed - MBPP_BROKEN)
    rows = {row["task_id"]: row for row in full}
    assert not any(plain_exec_passes(rows[t]) for t in MBPP_BROKEN)


def test_sandbox_rejects_malformed_jobs(sandbox):
    with pytest.raises(ValueError, match="job 0"):
        sandbox.run([{"program": GOOD, "tests": []}])
    with pytest.raises(SyntaxError):
        sandbox.run([{"program": GOOD, "tests": ["assert ("]}])
    with pytest.raises(ValueError, match="2 responses but 1 examples"):
        code_reward(["a", "b"], [{"test_list": ["assert 1"]}], sandbox=sandbox)


def test_worker_death_is_a_failed_sample_and_the_pool_recovers(sandbox):
    # Kill a worker from outside mid-job (as the OOM killer might): that sample fails, later ones pass.
    def killer():
        time.sleep(0.5)
        for proc in sandbox._procs:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)

    threading.Thread(target=killer).start()
    slow = "import time\ndef add(a, b):\n    time.sleep(2)\n    return a + b\n"
    r = sandbox.run([{"program": slow, "tests": ADD_TESTS}] * 2)
    assert [x.status for x in r] == ["error", "error"]
    assert all("worker killed by SIGKILL" in x.detail for x in r), r  # how it died, to tell OOM from a bug
    assert all(x.passed for x in sandbox.run([{"program": GOOD, "tests": ADD_TESTS}] * 3))


@pytest.fixture
def trusted(monkeypatch):
    """The worker's job loop module, imported as the worker does (next to its codec)."""
    monkeypatch.syspath_prepend(str(ROOT / "tasks"))
    import sandbox_trusted
    return sandbox_trusted


def test_a_deadline_while_another_error_is_handled_is_a_result_not_a_dead_worker(monkeypatch, trusted):
    """The watch's alarm can fire anywhere, also inside the handler of an earlier error (seen under load: the
    program gone at its wall time, then the alarm in the handler). The Deadline used to escape run_tests and
    kill the worker: the job came back "error" instead of its timeout. Here the handler's str(e) raises it."""
    st = trusted
    class GoneAtTheDeadline(st.RemoteError):
        def __str__(self):
            raise st.Deadline("wall time exceeded while testing")

    def receive(self):
        raise GoneAtTheDeadline()

    monkeypatch.setattr(st.Channel, "receive", receive)
    before = signal.getsignal(signal.SIGALRM)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        tests, detail = st.run_tests(ours.fileno(), {"program": GOOD, "tests": ADD_TESTS}, time.monotonic() + 5, 1 << 16)
    assert tests == [False, False] and detail == "Deadline: wall time exceeded while testing"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before


def test_the_watch_raises_its_deadline_once_and_never_after_disarm(trusted):
    Deadline, Watch = trusted.Deadline, trusted.Watch

    late = Watch(time.monotonic() - 1.0, over_cpu=lambda: False)
    with pytest.raises(Deadline, match="wall time"):
        late(signal.SIGALRM, None)
    assert late(signal.SIGALRM, None) is None  # its handler and the cleanup after it run uninterrupted
    cpu = Watch(time.monotonic() + 60, over_cpu=lambda: True)
    with pytest.raises(Deadline, match="CPU time"):
        cpu(signal.SIGALRM, None)
    disarmed = Watch(time.monotonic() - 1.0, over_cpu=lambda: True)
    disarmed.disarm()
    assert disarmed(signal.SIGALRM, None) is None
