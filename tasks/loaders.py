"""Loaders for the self-correction tasks: GSM8K, MATH-500 (and any MATH-format JSONL), HumanEval, MBPP.

Every loader returns plain dicts with a uniform core so rewards and prompts can treat tasks alike:

* math tasks: ``{"id", "task", "problem", "answer", "solution", ...}``; ``answer`` is the gold final answer
  string that ``tasks.math_grading.math_reward`` compares against;
* code tasks: ``{"id", "task", "problem", "entry_point", ...}`` plus the test fields ``tasks.sandbox.build_job``
  reads: HumanEval ``prompt``/``test``; MBPP ``test_list`` (+ ``test_setup_code``, ``test_imports``).

A malformed row is a ``training.records.DataFormatError`` naming the file, the line (1-based; for a JSON array
file, the item index) and the field: invalid JSON, a missing field, a wrong type, a truncated gzip file, invalid
UTF-8, an empty file, an empty gold answer (a problem nobody could get right), and an id seen before in the file (MATH's ``unique_id``,
HumanEval's and MBPP's ``task_id``): results are keyed by id, so a repeat would silently replace a problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.math_grading import last_boxed
from tasks.sandbox import called_function
from training.records import DataFormatError, check_field, iter_lines, read_jsonl


class _Ids:
    """The ids of one file so far, to refuse a repeat with both places."""

    def __init__(self, path, field: str):
        self.path, self.field, self.first = path, field, {}

    def add(self, where, value: str) -> str:
        if value in self.first:
            first = self.first[value]
            raise DataFormatError(self.path, where, self.field, f"duplicate {self.field} {value!r} (first at "
                                  f"{'line ' if isinstance(first, int) else ''}{first}); every problem needs its own id")
        self.first[value] = where
        return value


def _gold(path, lineno, answer: str, field: str) -> str:
    if not answer.strip():
        raise DataFormatError(path, lineno, field, "the gold answer is empty (no response could be graded right)")
    return answer


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, thousands separators removed."""
    return solution.split("####")[-1].strip().replace(",", "")


def load_gsm8k(path: str | Path) -> list[dict]:
    """GSM8K ``{"question", "answer"}`` rows (answer = worked solution ending ``#### n``)."""
    out = []
    for lineno, row in read_jsonl(path, skip_blank=True):
        question = check_field(path, lineno, row, "question")
        solution = check_field(path, lineno, row, "answer")
        if "####" not in solution:
            raise DataFormatError(path, lineno, "answer", "no '#### <final answer>'")
        out.append({"id": f"{Path(path).stem}/{lineno}", "task": "gsm8k", "problem": question,
                    "answer": _gold(path, lineno, gsm8k_answer(solution), "answer"), "solution": solution})
    return out


def load_math(path: str | Path, task: str = "math") -> list[dict]:
    """MATH-format JSONL (MATH-500 or a user's file): ``problem``, ``solution``, optional ``answer`` (derived
    from the solution's last ``\\boxed{}`` when absent), optional ``unique_id``/``subject``/``level``."""
    out, ids = [], _Ids(path, "unique_id")
    for lineno, row in read_jsonl(path, skip_blank=True):
        problem = check_field(path, lineno, row, "problem")
        solution = check_field(path, lineno, row, "solution")
        answer = check_field(path, lineno, row, "answer", required=False)
        if answer is None:
            answer = last_boxed(solution)
            if answer is None:
                raise DataFormatError(path, lineno, "solution", "no \\boxed{} in it and no field 'answer'")
        _gold(path, lineno, answer, "answer" if "answer" in row else "solution")
        level = row.get("level")
        out.append({"id": ids.add(lineno, str(row.get("unique_id") or f"{Path(path).stem}/{lineno}")), "task": task,
                    "problem": problem, "answer": answer, "solution": solution,
                    "subject": row.get("subject") or row.get("type"), "level": level})
    return out


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval ``{task_id, prompt, canonical_solution, test, entry_point}`` (jsonl or jsonl.gz)."""
    out, ids = [], _Ids(path, "task_id")
    for lineno, row in read_jsonl(path, skip_blank=True):
        fields = {k: check_field(path, lineno, row, k) for k in ("task_id", "prompt", "canonical_solution", "test",
                                                             "entry_point")}
        out.append({"id": ids.add(lineno, fields["task_id"]), "task": "humaneval", "problem": fields["prompt"],
                    "prompt": fields["prompt"], "test": fields["test"], "entry_point": fields["entry_point"],
                    "canonical_solution": fields["canonical_solution"]})
    return out


MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


def _mbpp_row(path, where, row: dict, sanitized: bool) -> dict:
    task_id = check_field(path, where, row, "task_id", int)
    text = check_field(path, where, row, "prompt" if sanitized else "text")
    code = check_field(path, where, row, "code")
    tests = check_field(path, where, row, "test_list", list)
    if not tests:
        raise DataFormatError(path, where, "test_list", "empty")
    entry = called_function(tests[0])
    if entry is None:
        raise DataFormatError(path, where, "test_list", "the first assert calls no function")
    split = next((name for name, ids in MBPP_SPLITS.items() if task_id in ids), "extra")
    return {"where": where, "id": f"mbpp/{task_id}", "task": "mbpp", "task_id": task_id, "split": split,
            "problem": text,
            "code": code.replace("\r\n", "\n"), "test_list": tests, "entry_point": entry,
            "test_setup_code": "" if sanitized else check_field(path, where, row, "test_setup_code"),
            "test_imports": check_field(path, where, row, "test_imports", list) if sanitized else [],
            "challenge_test_list": [] if sanitized else check_field(path, where, row, "challenge_test_list", list)}


def load_mbpp(path: str | Path, split: str | None = None) -> list[dict]:
    """MBPP: the full ``mbpp.jsonl(.gz)`` or the sanitized ``sanitized-mbpp.json(.gz)`` (one JSON array).
    ``split`` in prompt/test/validation/train selects by task_id (the paper's ranges)."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; expected one of {sorted(MBPP_SPLITS)}")
    name = Path(path).name
    if name.endswith((".json", ".json.gz")):
        text = "\n".join(line for _, line in iter_lines(path))
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(items, list):
            raise DataFormatError(path, None, None, "expected a JSON array of tasks")
        rows = []
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataFormatError(path, f"item {k}", None, "expected a JSON object")
            rows.append(_mbpp_row(path, f"item {k}", item, sanitized=True))
    else:
        rows = [_mbpp_row(path, lineno, row, sanitized=False) for lineno, row in read_jsonl(path, skip_blank=True)]
    ids = _Ids(path, "task_id")
    for row in rows:
        ids.add(row.pop("where"), row["task_id"])
    return [r for r in rows if split is None or r["split"] == split]
