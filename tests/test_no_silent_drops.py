"""No silent drops (issue 22, item 6, and the empty gold answer of item 9): every loader keyed by id refuses a
repeated id naming the file, the line and the id (results, attempts.jsonl and training draws are keyed by id,
so a repeat replaced a problem: 6 problems in, 5 out), and a problem whose gold answer is empty is refused
(it could never be graded right)."""

import gzip
import json
from pathlib import Path

import pytest

from datamodules.qa import read_qa_jsonl
from tasks.loaders import load_gsm8k, load_humaneval, load_math, load_mbpp
from training.records import DataFormatError


def jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_math_duplicate_unique_id_names_file_line_and_id(tmp_path):
    rows = [{"problem": f"p{i}", "solution": f"\\boxed{{{i}}}", "unique_id": f"test/algebra/{i}.json"}
            for i in range(6)]
    rows[4]["unique_id"] = rows[1]["unique_id"]
    path = jsonl(tmp_path / "math.jsonl", rows)
    with pytest.raises(DataFormatError,
                       match=rf"^{path}, line 5, field 'unique_id': duplicate unique_id 'test/algebra/1.json' \(first at line 2\)"):
        load_math(path)
    rows[4]["unique_id"] = "test/algebra/9.json"
    assert len(load_math(jsonl(path, rows))) == 6


def _humaneval(i: int, task_id: str) -> dict:
    return {"task_id": task_id, "prompt": f"def f{i}():\n", "canonical_solution": "    return 1\n",
            "test": "def check(c):\n    assert c() == 1\n", "entry_point": f"f{i}"}


def test_humaneval_duplicate_task_id(tmp_path):
    path = jsonl(tmp_path / "he.jsonl.gz", [_humaneval(0, "HumanEval/0"), _humaneval(1, "HumanEval/1"),
                                            _humaneval(2, "HumanEval/0")], gz=True)
    with pytest.raises(DataFormatError, match=rf"^{path}, line 3, field 'task_id': duplicate task_id 'HumanEval/0' \(first at line 1\)"):
        load_humaneval(path)


def _mbpp(task_id: int, sanitized: bool = False) -> dict:
    row = {"task_id": task_id, "code": "def f(x):\n    return x", "test_list": ["assert f(1) == 1"]}
    if sanitized:
        return {**row, "prompt": "Return x.", "test_imports": []}
    return {**row, "text": "Return x.", "test_setup_code": "", "challenge_test_list": []}


def test_mbpp_duplicate_task_id_in_either_format(tmp_path):
    path = jsonl(tmp_path / "mbpp.jsonl", [_mbpp(11), _mbpp(12), _mbpp(11)])
    with pytest.raises(DataFormatError, match=rf"^{path}, line 3, field 'task_id': duplicate task_id 11 \(first at line 1\)"):
        load_mbpp(path, "test")
    sanitized = tmp_path / "sanitized-mbpp.json"
    sanitized.write_text(json.dumps([_mbpp(11, True), _mbpp(12, True), _mbpp(12, True)]))
    with pytest.raises(DataFormatError, match=rf"^{sanitized}, item 2, field 'task_id': duplicate task_id 12 \(first at item 1\)"):
        load_mbpp(sanitized)
    rows = load_mbpp(jsonl(path, [_mbpp(11), _mbpp(12)]), "test")
    assert [r["id"] for r in rows] == ["mbpp/11", "mbpp/12"] and "where" not in rows[0]


def test_qa_duplicate_id_is_refused_for_retrobust_training(tmp_path, tiny_llama_dir):
    """RetRobust (and Search-R1's prompts, REPLUG LSR's QA) read questions with read_qa_jsonl."""
    from datamodules.retrobust import RetRobustDataModule

    rows = [{"id": f"q{i}", "question": f"who is {i}?", "answers": [f"a{i}"]} for i in range(4)]
    rows[3]["id"] = "q0"
    train = jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataFormatError, match=rf"^{train}, line 4, field 'id': duplicate id 'q0' \(first at line 1\)"):
        read_qa_jsonl(train)
    jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"passage {i}"} for i in range(30)])
    dm = RetRobustDataModule(train_file=str(train), val_file=None, test_file=None, corpus=str(tmp_path),
                             tokenizer=tiny_llama_dir, num_train=None, low_rank_range=(2, 3))
    with pytest.raises(DataFormatError, match="duplicate id 'q0'"):
        dm.setup("fit")
    # ids that are not given are the line numbers: never a repeat
    assert [r["id"] for r in read_qa_jsonl(jsonl(train, [{"question": "q", "answers": ["a"]}] * 2))] == \
        ["train-1", "train-2"]


@pytest.mark.parametrize("loader, rows, message", [
    (load_gsm8k, [{"question": "q", "answer": "1 + 1 = 2\n#### 2"}, {"question": "q", "answer": "so\n####  "}],
     r"g\.jsonl, line 2, field 'answer': the gold answer is empty"),
    (load_math, [{"problem": "p", "solution": "s", "answer": " "}],
     r"g\.jsonl, line 1, field 'answer': the gold answer is empty"),
    (load_math, [{"problem": "p", "solution": "\\boxed{3}"}, {"problem": "p", "solution": "so \\boxed{}"}],
     r"g\.jsonl, line 2, field 'solution': the gold answer is empty"),
])
def test_empty_gold_answer_names_file_line_and_field(tmp_path, loader, rows, message):
    with pytest.raises(DataFormatError, match=message):
        loader(jsonl(tmp_path / "g.jsonl", rows))


def test_shipped_task_files_have_no_repeated_ids():
    root = Path(__file__).resolve().parent.parent / "data"
    assert len({r["id"] for r in load_math(root / "math500/test.jsonl", "math500")}) == 500
    assert len(load_humaneval(root / "humaneval/HumanEval.jsonl.gz")) == 164
    assert len(load_mbpp(root / "mbpp/sanitized-mbpp.json.gz")) == 427
