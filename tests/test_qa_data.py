"""QA data: strict JSONL reading, the NQ pool build (merging, fixed split), the shipped pool, the DataModule."""

from __future__ import annotations

import gzip
import json

import pytest

from datamodules.beir import PROJECT_ROOT
from datamodules.qa import QADataModule, build_nq_pool, read_qa_jsonl
from retrieval.beir import BeirDataset, DataFormatError


def test_read_qa_jsonl_accepts_both_answer_fields_and_names_bad_lines(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "q1", "answers": ["a"]}\n{"question": "q2", "answer": ["b", "c"]}\n')
    rows = read_qa_jsonl(f)
    assert [r["answers"] for r in rows] == [["a"], ["b", "c"]] and rows[1]["id"] == "qa-2"
    f.write_text('{"question": "q1", "answers": ["a"]}\n{"question": "q2", "answers": "b"}\n')
    with pytest.raises(DataFormatError, match=r"qa.jsonl.*line 2.*answers"):
        read_qa_jsonl(f)
    f.write_text('{"question": "q1"}\n')
    with pytest.raises(DataFormatError, match=r"line 1.*answers"):
        read_qa_jsonl(f)
    f.write_text('{"question": "q1", "answers": []}\n')
    with pytest.raises(DataFormatError, match="non-empty list"):
        read_qa_jsonl(f)


def test_build_nq_pool_merges_passages_and_splits_with_seed(tmp_path):
    rows = [{"question": f"question {i}", "answers": [f"a{i}"],
             "ctxs": [{"title": f"T{i % 4}", "text": f"text {i % 4}", "hasanswer": True, "isgold": True}]}
            for i in range(10)]
    oracle = tmp_path / "oracle.jsonl.gz"
    with gzip.open(oracle, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    counts = build_nq_pool(oracle, tmp_path / "a", seed=3, n_dev=2, n_test=3)
    assert counts == {"passages": 4, "questions": 10, "test": 3, "dev": 2, "train": 5}
    build_nq_pool(oracle, tmp_path / "b", seed=3, n_dev=2, n_test=3)
    for name in ("corpus.jsonl", "test.jsonl", "dev.jsonl", "train.jsonl", "qrels/test.tsv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    test = read_qa_jsonl(tmp_path / "a" / "test.jsonl")
    # question i's passage is (T{i%4}, text {i%4}), first seen at question i%4 -> id nq-{i%4}
    assert all(r["gold_id"] == f"nq-{int(r['id'][1:]) % 4}" for r in test)
    ids = [r["id"] for s in ("train", "dev", "test") for r in read_qa_jsonl(tmp_path / "a" / f"{s}.jsonl")]
    assert sorted(ids) == sorted(f"q{i}" for i in range(10))
    beir = BeirDataset.load(tmp_path / "a", splits=("test",))
    assert len(beir.corpus) == 4 and len(beir.qrels["test"]) == 3


def test_shipped_pool_and_datamodule():
    dm = QADataModule(test_file="data/nq_pool/test.jsonl", val_file="data/nq_pool/dev.jsonl", limit=5, batch_size=2)
    dm.setup("test")
    assert len(dm.passages) == 2600 and len(dm.splits["test"]) == 5
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"ids", "questions", "answers", "gold_ids"} and len(batch["questions"]) == 2
    assert all(g in dm.passages for g in batch["gold_ids"])
    full = read_qa_jsonl(PROJECT_ROOT / "data/nq_pool/test.jsonl")
    assert len(full) == 300 and len({r["id"] for r in full}) == 300
    assert len(read_qa_jsonl(PROJECT_ROOT / "data/nq_open/NQ-open.dev.jsonl", limit=3)) == 3
