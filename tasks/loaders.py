"""Loaders for the self-correction tasks: GSM8K, MATH-500 (and any MATH-format JSONL), HumanEval, MBPP.

Every loader returns plain dicts with a uniform core so rewards and prompts can treat tasks alike:

* math tasks: ``{"id", "task", "problem", "answer", "solution", ...}``; ``answer`` is the gold final answer
  string that ``tasks.math_grading.math_reward`` compares against;
* code tasks: ``{"id", "task", "problem", "entry_point", ...}`` plus the test fields ``tasks.sandbox.build_job``
  reads: HumanEval ``prompt``/``test``; MBPP ``test_list`` (+ ``test_setup_code``, ``test_imports``).

A malformed row is an error naming the file, the line (1-based; for a JSON array file, the item index) and
the field: invalid JSON, a missing field, a wrong type, a truncated gzip file, invalid UTF-8, an empty gold
answer (a problem nobody could get right), and an id seen before in the file (MATH's ``unique_id``,
HumanEval's and MBPP's ``task_id``): results are keyed by id, so a repeat would silently replace a problem.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from tasks.math_grading import last_boxed
from tasks.sandbox import called_function


class TaskDataError(ValueError):
    """A malformed dataset file or row; the message names the file, line and field."""


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as e:  # truncated / corrupt gzip
        raise TaskDataError(f"{path}: cannot read gzip data ({type(e).__name__}: {e}); is the file truncated?") \
            from None


def _decode(path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        raise TaskDataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None


def _read_lines(path: str | Path) -> list[tuple[int, str]]:
    raw = _read_bytes(path)
    return [(lineno, _decode_line(path, lineno, line)) for lineno, line in enumerate(raw.split(b"\n"), start=1)
            if line.strip()]


def _decode_line(path, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start} of the line") from None


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line; errors name the file and line."""
    rows = []
    for lineno, line in _read_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise TaskDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append((lineno, obj))
    return rows


def _field(path, lineno, row: dict, name: str, kind=str, required: bool = True):
    if name not in row:
        if required:
            raise TaskDataError(f"{path}:{lineno}: missing field {name!r}")
        return None
    value = row[name]
    if kind is list and isinstance(value, list):
        if not all(isinstance(x, str) for x in value):
            raise TaskDataError(f"{path}:{lineno}: field {name!r} must be a list of strings")
        return value
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise TaskDataError(f"{path}:{lineno}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


class _Ids:
    """The ids of one file so far, to refuse a repeat with both places."""

    def __init__(self, path, field: str):
        self.path, self.field, self.first = path, field, {}

    def add(self, where, value: str) -> str:
        if value in self.first:
            first = self.first[value]
            raise TaskDataError(f"{self.path}:{where}: duplicate {self.field} {value!r} (first at "
                                f"{'line ' if isinstance(first, int) else ''}{first}); every problem needs its own id")
        self.first[value] = where
        return value


def _gold(path, lineno, answer: str, field: str) -> str:
    if not answer.strip():
        raise TaskDataError(f"{path}:{lineno}: field {field!r}: the gold answer is empty (no response could be "
                            "graded right)")
    return answer


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, thousands separators removed."""
    return solution.split("####")[-1].strip().replace(",", "")


def load_gsm8k(path: str | Path) -> list[dict]:
    """GSM8K ``{"question", "answer"}`` rows (answer = worked solution ending ``#### n``)."""
    out = []
    for lineno, row in read_jsonl(path):
        question = _field(path, lineno, row, "question")
        solution = _field(path, lineno, row, "answer")
        if "####" not in solution:
            raise TaskDataError(f"{path}:{lineno}: field 'answer' has no '#### <final answer>'")
        out.append({"id": f"{Path(path).stem}/{lineno}", "task": "gsm8k", "problem": question,
                    "answer": _gold(path, lineno, gsm8k_answer(solution), "answer"), "solution": solution})
    return out


def load_math(path: str | Path, task: str = "math") -> list[dict]:
    """MATH-format JSONL (MATH-500 or a user's file): ``problem``, ``solution``, optional ``answer`` (derived
    from the solution's last ``\\boxed{}`` when absent), optional ``unique_id``/``subject``/``level``."""
    out, ids = [], _Ids(path, "unique_id")
    for lineno, row in read_jsonl(path):
        problem = _field(path, lineno, row, "problem")
        solution = _field(path, lineno, row, "solution")
        answer = _field(path, lineno, row, "answer", required=False)
        if answer is None:
            answer = last_boxed(solution)
            if answer is None:
                raise TaskDataError(f"{path}:{lineno}: no field 'answer' and field 'solution' has no \\boxed{{}}")
        _gold(path, lineno, answer, "answer" if "answer" in row else "solution")
        level = row.get("level")
        out.append({"id": ids.add(lineno, str(row.get("unique_id") or f"{Path(path).stem}/{lineno}")), "task": task,
                    "problem": problem, "answer": answer, "solution": solution,
                    "subject": row.get("subject") or row.get("type"), "level": level})
    return out


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval ``{task_id, prompt, canonical_solution, test, entry_point}`` (jsonl or jsonl.gz)."""
    out, ids = [], _Ids(path, "task_id")
    for lineno, row in read_jsonl(path):
        fields = {k: _field(path, lineno, row, k) for k in ("task_id", "prompt", "canonical_solution", "test",
                                                             "entry_point")}
        out.append({"id": ids.add(lineno, fields["task_id"]), "task": "humaneval", "problem": fields["prompt"],
                    "prompt": fields["prompt"], "test": fields["test"], "entry_point": fields["entry_point"],
                    "canonical_solution": fields["canonical_solution"]})
    return out


MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


def _mbpp_row(path, where, row: dict, sanitized: bool) -> dict:
    task_id = _field(path, where, row, "task_id", int)
    text = _field(path, where, row, "prompt" if sanitized else "text")
    code = _field(path, where, row, "code")
    tests = _field(path, where, row, "test_list", list)
    if not tests:
        raise TaskDataError(f"{path}:{where}: field 'test_list' is empty")
    entry = called_function(tests[0])
    if entry is None:
        raise TaskDataError(f"{path}:{where}: field 'test_list' first assert calls no function")
    split = next((name for name, ids in MBPP_SPLITS.items() if task_id in ids), "extra")
    return {"where": where, "id": f"mbpp/{task_id}", "task": "mbpp", "task_id": task_id, "split": split,
            "problem": text,
            "code": code.replace("\r\n", "\n"), "test_list": tests, "entry_point": entry,
            "test_setup_code": "" if sanitized else _field(path, where, row, "test_setup_code"),
            "test_imports": _field(path, where, row, "test_imports", list) if sanitized else [],
            "challenge_test_list": [] if sanitized else _field(path, where, row, "challenge_test_list", list)}


def load_mbpp(path: str | Path, split: str | None = None) -> list[dict]:
    """MBPP: the full ``mbpp.jsonl(.gz)`` or the sanitized ``sanitized-mbpp.json(.gz)`` (one JSON array).
    ``split`` in prompt/test/validation/train selects by task_id (the paper's ranges)."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; expected one of {sorted(MBPP_SPLITS)}")
    name = Path(path).name
    if name.endswith((".json", ".json.gz")):
        text = _decode(path, _read_bytes(path))
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(items, list):
            raise TaskDataError(f"{path}: expected a JSON array of tasks")
        rows = []
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                raise TaskDataError(f"{path}:item {k}: expected a JSON object")
            rows.append(_mbpp_row(path, f"item {k}", item, sanitized=True))
    else:
        rows = [_mbpp_row(path, lineno, row, sanitized=False) for lineno, row in read_jsonl(path)]
    ids = _Ids(path, "task_id")
    for row in rows:
        ids.add(row.pop("where"), row["task_id"])
    return [r for r in rows if split is None or r["split"] == split]
