"""Task loaders: uniform rows from the real files, and errors that name file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tasks.math_grading import is_equiv
from training.records import DataFormatError
from tasks.loaders import load_gsm8k, load_humaneval, load_math, load_mbpp

DATA = Path(__file__).resolve().parent.parent / "data"


def test_real_files_load_with_uniform_keys():
    gsm = load_gsm8k(DATA / "gsm8k/test.jsonl")
    math500 = load_math(DATA / "math500/test.jsonl", task="math500")
    he = load_humaneval(DATA / "humaneval/HumanEval.jsonl.gz")
    mbpp = load_mbpp(DATA / "mbpp/mbpp.jsonl.gz")
    san = load_mbpp(DATA / "mbpp/sanitized-mbpp.json.gz")
    assert (len(gsm), len(math500), len(he), len(mbpp), len(san)) == (1319, 500, 164, 974, 427)
    assert len(load_gsm8k(DATA / "gsm8k/train.jsonl")) == 7473
    for rows in (gsm, math500, he, mbpp, san):
        assert all({"id", "task", "problem"} <= set(r) for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
    # GSM8K row 1 (Janet's ducks): final answer 18, thousands separators removed elsewhere
    assert gsm[0]["answer"] == "18" and gsm[0]["problem"].startswith("Janet")
    assert all("," not in r["answer"] for r in gsm)
    assert math500[0]["id"] == "test/precalculus/807.json" and math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert he[0]["entry_point"] == "has_close_elements" and "def check" in he[0]["test"]
    assert [len(load_mbpp(DATA / "mbpp/mbpp.jsonl.gz", split=s)) for s in ("prompt", "test", "validation", "train")] \
        == [10, 500, 90, 374]
    assert [len(load_mbpp(DATA / "mbpp/sanitized-mbpp.json.gz", split=s)) for s in ("prompt", "test", "validation",
                                                                                   "train")] == [7, 257, 43, 120]
    by_id = {r["task_id"]: r for r in mbpp}
    assert by_id[126]["entry_point"] == "sum" and by_id[367]["test_setup_code"].startswith("root = Node(1)")
    assert "\r" not in by_id[2]["code"]


def write(path: Path, text: str | bytes, gz: bool = False) -> Path:
    data = text.encode() if isinstance(text, str) else text
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_math_answer_derived_from_last_boxed(tmp_path):
    p = write(tmp_path / "m.jsonl", json.dumps({"problem": "p", "solution": "a \\boxed{1} then \\boxed{\\frac{1}{2}}"})
              + "\n" + json.dumps({"problem": "q", "solution": "s", "answer": "7"}) + "\n")
    rows = load_math(p)
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}", "7"] and rows[0]["id"] == "m/1"
    assert is_equiv("0.5", rows[0]["answer"])


@pytest.mark.parametrize("content,loader,message", [
    ('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "#### 2"\n', load_gsm8k,
     r"bad\.jsonl, line 2: invalid JSON"),
    ('{"question": "q", "answer": "#### 1"}\n\n{"answer": "#### 2"}\n', load_gsm8k,
     r"bad\.jsonl, line 3, field 'question': missing"),
    ('{"question": "q", "answer": 5}\n', load_gsm8k, r"bad\.jsonl, line 1, field 'answer': expected str, got int"),
    ('{"question": "q", "answer": "no marker"}\n', load_gsm8k, r"bad\.jsonl, line 1, field 'answer': no '####"),
    ('{"problem": "p", "solution": "no box"}\n', load_math, r"bad\.jsonl, line 1, field 'solution': no \\boxed\{\} in it and no field 'answer'"),
    ('{"problem": ["p"], "solution": "s", "answer": "1"}\n', load_math, r"bad\.jsonl, line 1, field 'problem': expected str"),
    ('[1, 2]\n', load_math, r"bad\.jsonl, line 1: expected a JSON object"),
])
def test_malformed_rows_name_file_line_field(tmp_path, content, loader, message):
    with pytest.raises(DataFormatError, match=message):
        loader(write(tmp_path / "bad.jsonl", content))


def test_invalid_utf8_names_line(tmp_path):
    p = write(tmp_path / "bad.jsonl", b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff", "answer": "#### 2"}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: invalid UTF-8"):
        load_gsm8k(p)


def test_truncated_gzip(tmp_path):
    good = (DATA / "humaneval/HumanEval.jsonl.gz").read_bytes()
    p = write(tmp_path / "HumanEval.jsonl.gz", good[: len(good) // 2])
    with pytest.raises(DataFormatError, match=r"HumanEval\.jsonl\.gz, line \d+: truncated or corrupt gzip data"):
        load_humaneval(p)


def test_humaneval_and_mbpp_field_errors(tmp_path):
    row = {"task_id": "X/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n", "test": "def check(c): pass"}
    with pytest.raises(DataFormatError, match=r"he\.jsonl\.gz, line 1, field 'entry_point': missing"):
        load_humaneval(write(tmp_path / "he.jsonl.gz", json.dumps(row) + "\n", gz=True))
    mbpp = {"text": "t", "code": "def f(): pass", "task_id": "12", "test_setup_code": "", "test_list": ["assert f()"],
            "challenge_test_list": []}
    with pytest.raises(DataFormatError, match=r"mbpp\.jsonl, line 1, field 'task_id': expected int, got str"):
        load_mbpp(write(tmp_path / "mbpp.jsonl", json.dumps(mbpp) + "\n"))
    mbpp["task_id"] = True  # a bool is no task id (json true is a Python int subclass)
    with pytest.raises(DataFormatError, match=r"mbpp\.jsonl, line 1, field 'task_id': expected int, got bool"):
        load_mbpp(write(tmp_path / "mbpp.jsonl", json.dumps(mbpp) + "\n"))
    mbpp["task_id"], mbpp["test_list"] = 12, ["assert f()", 3]
    with pytest.raises(DataFormatError, match=r"mbpp\.jsonl, line 1, field 'test_list': expected a list of strings"):
        load_mbpp(write(tmp_path / "mbpp.jsonl", json.dumps(mbpp) + "\n"))
    san = [{"source_file": "s", "task_id": 2, "prompt": "p", "code": "c", "test_imports": [], "test_list": ["assert f()"]},
           {"source_file": "s", "task_id": 3, "prompt": "p", "code": "c", "test_imports": []}]
    with pytest.raises(DataFormatError, match=r"san\.json, item 1, field 'test_list': missing"):
        load_mbpp(write(tmp_path / "san.json", json.dumps(san)))
    with pytest.raises(DataFormatError, match=r"san\.json, line 3: invalid JSON"):
        load_mbpp(write(tmp_path / "san.json", '[\n{"task_id": 2},\n{oops}\n]'))
    with pytest.raises(ValueError, match="unknown MBPP split 'dev'"):
        load_mbpp(DATA / "mbpp/mbpp.jsonl.gz", split="dev")
