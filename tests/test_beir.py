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
    ("qid\tdid\trel\nq0\td0\t1\n", 1, None, "expected the header"),
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


# -- malformed bytes, types and layouts (issue 16) ----------------------------------------------------------
def test_truncated_gzip_names_the_file_and_line(tmp_path):
    lines = "".join(f'{{"_id": "d{i}", "text": "document number {i} {"x" * 50}"}}\n' for i in range(400))
    whole = gzip.compress(lines.encode())
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match="truncated or corrupt gzip") as err:
        load_corpus(path)
    assert err.value.path == str(path) and 1 < err.value.line <= 400


def test_invalid_utf8_names_the_line_and_byte(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: invalid UTF-8 \(byte 0xe9 at byte 26 of the line\)") as err:
        load_corpus(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("title", ["3", "[\"a\"]", "{\"x\": 1}", "true"])
def test_non_string_title_is_refused(tmp_path, title):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "title": ' + title + ', "text": "y"}\n')
    with pytest.raises(DataFormatError, match="line 2, field 'title': expected str or null"):
        load_corpus(path)


def test_null_title_counts_as_absent(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "title": null, "text": "body"}\n')
    assert passage_text(load_corpus(path)["a"]) == "body"


def test_passage_text_is_one_rule():
    assert passage_text({"title": " T ", "text": "body"}) == "T body"
    assert passage_text({"title": "", "text": "body"}) == passage_text({"text": "body"}) == "body"


def test_plain_and_gz_both_present_says_which_is_read(tiny_beir_dir, caplog):
    with gzip.open(tiny_beir_dir / "corpus.jsonl.gz", "wt") as f:
        f.write('{"_id": "other", "text": "a stale copy"}\n')
    with caplog.at_level("WARNING", logger="retrieval.beir"):
        data = BeirDataset.load(tiny_beir_dir)
    assert "other" not in data.corpus and len(data.corpus) == 12
    assert f"reading {tiny_beir_dir / 'corpus.jsonl'}" in caplog.text and "corpus.jsonl.gz" in caplog.text


HEADERLESS = "q0\td0\t1\nq1\td1\t1\n"


def test_qrels_without_header_are_refused_with_the_option_named(tiny_beir_dir):
    path = write(tiny_beir_dir / "qrels" / "test.tsv", HEADERLESS)
    with pytest.raises(DataFormatError, match="line 1: expected the header.*no header line.*qrels_header false"):
        load_qrels(path)
    assert load_qrels(path, header=False) == {"q0": {"d0": 1}, "q1": {"d1": 1}}
    data = BeirDataset.load(tiny_beir_dir, splits=("test",), qrels_header=False)
    assert data.qrels["test"] == {"q0": {"d0": 1}, "q1": {"d1": 1}}


def test_qrels_header_false_on_a_file_with_header_is_refused(tiny_beir_dir):
    with pytest.raises(DataFormatError, match="line 1: qrels_header is false but the first line is the header"):
        load_qrels(tiny_beir_dir / "qrels" / "train.tsv", header=False)


def test_training_qrels_all_zero_name_the_file(tiny_beir_dir):
    from datamodules.beir import BEIRDataModule

    write(tiny_beir_dir / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t0\n" for i in range(6)))
    dm = BEIRDataModule(str(tiny_beir_dir), batch_size=2, num_negatives=0)
    dm.setup("fit")
    with pytest.raises(DataFormatError, match=r"train.tsv, field 'score': none of the 6 training queries has a "
                                              r"judgement with score > 0"):
        dm.train_dataloader()


def test_batch_larger_than_training_queries_is_refused(tiny_beir_dir):
    from datamodules.beir import BEIRDataModule

    dm = BEIRDataModule(str(tiny_beir_dir), batch_size=7, num_negatives=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"batch_size 7 is larger than the 6 training queries.*batch_size 6 or less"):
        dm.train_dataloader()
    dm = BEIRDataModule(str(tiny_beir_dir), batch_size=6, num_negatives=0)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1


def test_test_stage_reads_no_training_qrels(tiny_beir_dir):
    from datamodules.beir import BEIRDataModule

    (tiny_beir_dir / "qrels" / "train.tsv").unlink()
    dm = BEIRDataModule(str(tiny_beir_dir))
    dm.setup("test")
    assert sorted(dm.eval_qrels("test")) == ["q6", "q7", "q8", "q9"]
    with pytest.raises(FileNotFoundError, match="train.tsv: not found"):
        dm.setup("fit")
