"""BEIR loader: valid data loads; every malformed case raises an error naming file, line and field."""

import gzip

import pytest

from retrieval.beir import BeirDataset, DataFormatError, load_corpus, load_qrels, load_queries, passage_text


def write(path, text):
    path.write_text(text)
    return path


def test_loads_valid_dataset_and_gz(tiny_beir_dir):
    corpus_gz = tiny_beir_dir / "corpus.jsonl.gz"
    with gzip.open(corpus_gz, "wt") as f:
        f.write((tiny_beir_dir / "corpus.jsonl").read_text())
    (tiny_beir_dir / "corpus.jsonl").unlink()
    data = BeirDataset.load(tiny_beir_dir)
    assert len(data.corpus) == 12 and len(data.queries) == 10
    assert data.qrels["train"]["q0"] == {"d0": 1} and len(data.qrels["test"]) == 4
    assert passage_text(data.corpus["d3"]) == "title 3 document 3 about topic 3 and word3"


def test_real_scifact_counts():
    data = BeirDataset.load("data/scifact")
    assert (len(data.corpus), len(data.queries), len(data.qrels["train"]), len(data.qrels["test"])) == (5183, 1109, 809, 300)


@pytest.mark.parametrize("content, line, field, problem", [
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"\n', 2, None, "invalid JSON"),
    ('{"_id": "a", "text": "x"}\n{"text": "y"}\n', 2, "_id", "missing"),
    ('{"_id": "a"}\n', 1, "text", "missing"),
    ('{"_id": 3, "text": "x"}\n', 1, "_id", "expected str"),
    ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2, "_id", "duplicate id 'a' (first on line 1)"),
    ('{"_id": "a", "text": "x"}\n\n', 2, None, "blank line"),
    ('{"_id": "a", "text": "   "}\n', 1, "text", "empty text"),
    ('["a", "x"]\n', 1, None, "expected a JSON object"),
    ("", None, None, "file is empty"),
])
def test_malformed_jsonl(tmp_path, content, line, field, problem):
    path = write(tmp_path / "queries.jsonl", content)
    with pytest.raises(DataFormatError) as err:
        load_queries(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert problem in str(err.value) and str(path) in str(err.value)


def test_corpus_title_only_is_not_empty(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "title": "T", "text": ""}\n')
    assert load_corpus(path) == {"a": {"text": "", "title": "T"}}


@pytest.mark.parametrize("content, line, field, problem", [
    ("query-id\tcorpus-id\tscore\nq99\td0\t1\n", 2, "query-id", "unknown query 'q99'"),
    ("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\tzz\t1\n", 3, "corpus-id", "unknown document 'zz'"),
    ("query-id\tcorpus-id\tscore\nq0\td0\tone\n", 2, "score", "not an integer"),
    ("query-id\tcorpus-id\tscore\nq0\td0\n", 2, None, "expected 3 tab-separated fields"),
    ("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td0\t2\n", 3, "corpus-id", "duplicate judgement"),
    ("qid\tdid\trel\nq0\td0\t1\n", 1, None, "expected header"),
    ("query-id\tcorpus-id\tscore\n", None, None, "no judgements"),
    ("", None, None, "file is empty"),
])
def test_malformed_qrels(tiny_beir_dir, content, line, field, problem):
    data = BeirDataset.load(tiny_beir_dir)
    path = write(tiny_beir_dir / "qrels" / "bad.tsv", content)
    with pytest.raises(DataFormatError) as err:
        load_qrels(path, data.queries, data.corpus)
    assert (err.value.line, err.value.field) == (line, field)
    assert problem in str(err.value) and "bad.tsv" in str(err.value)


def test_dataset_checks_qrels_against_corpus(tiny_beir_dir):
    with open(tiny_beir_dir / "qrels" / "test.tsv", "a") as f:
        f.write("q7\tmissing-doc\t1\n")
    with pytest.raises(DataFormatError, match=r"test.tsv, line 6, field 'corpus-id': unknown document 'missing-doc'"):
        BeirDataset.load(tiny_beir_dir)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        BeirDataset.load(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl: not found"):
        BeirDataset.load(tmp_path / "d")
