"""Mutation check: apply one deliberate one-line bug at a time, run the tests named for it, and expect
them to FAIL. A mutation that survives (the tests still pass) is a formula the suite cannot catch.

    .venv/bin/python tests/mutation_check.py                 # every mutation in tests/mutations/*.py
    .venv/bin/python tests/mutation_check.py --area rl       # only tests/mutations/rl.py
    .venv/bin/python tests/mutation_check.py --name flipped_kl

Each file in ``tests/mutations/`` defines ``MUTATIONS``: a list of dicts with
    name:  short id
    file:  path relative to the repository root
    old:   exact text that must occur exactly once in the file
    new:   its replacement (the bug)
    tests: pytest node ids or files that must fail with the bug in place
The file is restored after each run (also on Ctrl-C). Exit status 1 if any mutation survives or cannot
be applied (its ``old`` text no longer matches: update the entry with the code).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(area: str | None) -> list[dict]:
    out = []
    for path in sorted((ROOT / "tests" / "mutations").glob("*.py")):
        if path.name.startswith("_") or (area and path.stem != area):
            continue
        spec = importlib.util.spec_from_file_location(f"mutations_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for m in module.MUTATIONS:
            missing = {"name", "file", "old", "new", "tests"} - set(m)
            if missing:
                raise ValueError(f"{path}: mutation {m.get('name', '?')!r} lacks {sorted(missing)}")
            out.append({**m, "area": path.stem})
    return out


def run_one(m: dict, python: str) -> tuple[str, float]:
    target = ROOT / m["file"]
    original = target.read_text()
    count = original.count(m["old"])
    if count != 1:
        return f"STALE (old text found {count} times)", 0.0
    target.write_text(original.replace(m["old"], m["new"]))
    start = time.time()
    try:
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                               *m["tests"]], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    finally:
        target.write_text(original)
    return ("caught" if proc.returncode != 0 else "SURVIVED"), time.time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--area", help="only tests/mutations/<area>.py")
    parser.add_argument("--name", action="append", help="only these mutation names (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    mutations = [m for m in load(args.area) if not args.name or m["name"] in args.name]
    if args.list:
        for m in mutations:
            print(f"{m['area']:>12}  {m['name']:<40} {m['file']}")
        return 0
    bad = 0
    for m in mutations:
        status, seconds = run_one(m, sys.executable)
        bad += status != "caught"
        print(f"{status:<10} {m['area']:>12}  {m['name']:<40} ({seconds:.0f} s)", flush=True)
    print(f"{len(mutations) - bad} of {len(mutations)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
