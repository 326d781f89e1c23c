"""Strict readers for BEIR-format datasets (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).

Every malformed row raises :class:`DataFormatError` naming the file, the 1-based line and the field;
nothing is dropped or guessed, so a number computed on the data is a number about all of it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class DataFormatError(ValueError):
    """A data file is malformed. The message names the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = str(path), line, field


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, transparently decompressing ``.gz``."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def find_file(directory: str | Path, name: str) -> Path:
    """``name`` or ``name.gz`` inside ``directory``; a clear error if neither exists."""
    for candidate in (Path(directory) / name, Path(directory) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{Path(directory) / name}: not found (nor {name}.gz)")


def read_jsonl(path: str | Path, required: dict[str, type]) -> list[tuple[int, dict]]:
    """Parse a JSONL file into ``(line_number, row)`` pairs, checking that each row has the ``required``
    fields with the given types. Blank lines are errors too: a truncated or hand-edited file should not
    pass unnoticed."""
    rows = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                raise DataFormatError(path, number, None, "blank line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(path, number, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataFormatError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
            for field, kind in required.items():
                if field not in row:
                    raise DataFormatError(path, number, field, "missing")
                if not isinstance(row[field], kind):
                    raise DataFormatError(path, number, field, f"expected {kind.__name__}, got {type(row[field]).__name__}")
            rows.append((number, row))
    if not rows:
        raise DataFormatError(path, None, None, "file is empty")
    return rows


def _read_id_text(path: Path, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    out: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for number, row in read_jsonl(path, {"_id": str, "text": str}):
        _id = row["_id"]
        if not _id:
            raise DataFormatError(path, number, "_id", "empty id")
        if _id in out:
            raise DataFormatError(path, number, "_id", f"duplicate id {_id!r} (first on line {first_line[_id]})")
        if not row["text"].strip() and not any(str(row.get(f) or "").strip() for f in extra):
            raise DataFormatError(path, number, "text", "empty text")
        first_line[_id] = number
        out[_id] = {"text": row["text"], **{f: row.get(f) or "" for f in extra}}
    return out


def load_corpus(path: str | Path) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title": str, "text": str}}`` from a BEIR corpus file (``title`` may be absent)."""
    return _read_id_text(Path(path), extra=("title",))


def load_queries(path: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR queries file."""
    return {qid: row["text"] for qid, row in _read_id_text(Path(path)).items()}


def load_qrels(path: str | Path, queries: dict | None = None, corpus: dict | None = None) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (header ``query-id corpus-id score``).

    With ``queries``/``corpus`` given, every id must exist in them: a judgement about an unknown
    query or document is an error, not a silently ignored row."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as handle:
        lines = handle.read().splitlines()
    if not lines:
        raise DataFormatError(path, None, None, "file is empty")
    header = lines[0].split("\t")
    if header[:3] != ["query-id", "corpus-id", "score"]:
        raise DataFormatError(path, 1, None, f"expected header 'query-id<TAB>corpus-id<TAB>score', got {lines[0]!r}")
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataFormatError(path, number, None, f"expected 3 tab-separated fields, got {len(parts)}")
        qid, did, score = parts
        for field, value in (("query-id", qid), ("corpus-id", did)):
            if not value:
                raise DataFormatError(path, number, field, "empty id")
        try:
            rel = int(score)
        except ValueError:
            raise DataFormatError(path, number, "score", f"not an integer: {score!r}") from None
        if queries is not None and qid not in queries:
            raise DataFormatError(path, number, "query-id", f"unknown query {qid!r}")
        if corpus is not None and did not in corpus:
            raise DataFormatError(path, number, "corpus-id", f"unknown document {did!r}")
        if did in qrels.get(qid, {}):
            raise DataFormatError(path, number, "corpus-id", f"duplicate judgement for ({qid!r}, {did!r})")
        qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise DataFormatError(path, None, None, "no judgements after the header")
    return qrels


@dataclass
class BeirDataset:
    """A BEIR dataset held in memory: the corpus, the queries, and qrels per split."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]

    @classmethod
    def load(cls, root: str | Path, splits: tuple[str, ...] = ("train", "test")) -> "BeirDataset":
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: BEIR dataset directory not found")
        corpus = load_corpus(find_file(root, "corpus.jsonl"))
        queries = load_queries(find_file(root, "queries.jsonl"))
        qrels = {split: load_qrels(find_file(root / "qrels", f"{split}.tsv"), queries, corpus) for split in splits}
        return cls(corpus, queries, qrels)


def passage_text(doc: dict[str, str], separator: str = " ") -> str:
    """The text a retriever sees for a document: title and body, as BEIR's dense baselines do."""
    title = (doc.get("title") or "").strip()
    return f"{title}{separator}{doc['text']}".strip() if title else doc["text"]
