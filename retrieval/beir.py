"""Strict readers for BEIR-format datasets (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).

Every malformed row raises :class:`DataFormatError` naming the file, the 1-based line and the field;
nothing is dropped or guessed, so a number computed on the data is a number about all of it.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
QRELS_HEADER = ["query-id", "corpus-id", "score"]


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


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each line of a UTF-8 text file (``.gz`` decompressed), 1-based, without the
    line ending. Invalid UTF-8 and a truncated or corrupt gzip stream raise :class:`DataFormatError` with the
    line where they occur."""
    path = Path(path)
    number = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(path, number, None, f"invalid UTF-8 (byte {raw[err.start]:#04x} at byte "
                                                              f"{err.start + 1} of the line)") from None
                yield number, text.rstrip("\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(path, number + 1, None, f"truncated or corrupt gzip data after line {number} "
                                                      f"({type(err).__name__}: {err})") from None


def find_file(directory: str | Path, name: str) -> Path:
    """``name`` or ``name.gz`` inside ``directory``; a clear error if neither exists. When both exist, the
    plain file is read and a warning says so (they may differ: one may be a stale copy)."""
    plain, gz = Path(directory) / name, Path(directory) / f"{name}.gz"
    if plain.is_file() and gz.is_file():
        log.warning("both %s and %s exist: reading %s (remove one to silence this)", plain, gz.name, plain)
    for candidate in (plain, gz):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{plain}: not found (nor {name}.gz)")


def read_jsonl(path: str | Path, required: dict[str, type]) -> list[tuple[int, dict]]:
    """Parse a JSONL file into ``(line_number, row)`` pairs, checking that each row has the ``required``
    fields with the given types. Blank lines are errors too: a truncated or hand-edited file should not
    pass unnoticed."""
    rows = []
    for number, line in iter_lines(path):
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
        for field in extra:  # optional, but a string when present (null counts as absent)
            if row.get(field) is not None and not isinstance(row[field], str):
                raise DataFormatError(path, number, field, f"expected str or null, got {type(row[field]).__name__}")
        if not row["text"].strip() and not any((row.get(f) or "").strip() for f in extra):
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


def load_qrels(path: str | Path, queries: dict | None = None, corpus: dict | None = None,
               header: bool = True) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (header ``query-id corpus-id score``).

    With ``queries``/``corpus`` given, every id must exist in them: a judgement about an unknown
    query or document is an error, not a silently ignored row. ``header=False`` reads a file without the
    header line (copies found in the wild often lack it); the default refuses one, since a header-less file
    read as if it had one would silently lose its first judgement."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    lines = list(iter_lines(path))
    if not lines:
        raise DataFormatError(path, None, None, "file is empty")
    first = lines[0][1].split("\t")
    is_header = first[:3] == QRELS_HEADER
    if header and not is_header:
        hint = ""
        if len(first) == 3 and first[2].strip().lstrip("-").isdigit():
            hint = (" it looks like a judgement, so the file probably has no header line; to read such a file, "
                    "set qrels_header false (--data.init_args.qrels_header false)")
        raise DataFormatError(path, 1, None, f"expected the header 'query-id<TAB>corpus-id<TAB>score', got "
                                             f"{lines[0][1]!r};{hint or ' fix the first line'}")
    if not header and is_header:
        raise DataFormatError(path, 1, None, "qrels_header is false but the first line is the header "
                                             "'query-id<TAB>corpus-id<TAB>score': set qrels_header true")
    for number, line in (lines[1:] if header else lines):
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

    root: Path | None = None
    qrels_header: bool = True

    @classmethod
    def load(cls, root: str | Path, splits: tuple[str, ...] = ("train", "test"), qrels_header: bool = True
             ) -> "BeirDataset":
        """The corpus, the queries and the qrels of ``splits``; more splits later with :meth:`load_split`."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: BEIR dataset directory not found")
        corpus = load_corpus(find_file(root, "corpus.jsonl"))
        queries = load_queries(find_file(root, "queries.jsonl"))
        data = cls(corpus, queries, {}, root, qrels_header)
        for split in splits:
            data.load_split(split)
        return data

    def load_split(self, split: str) -> dict[str, dict[str, int]]:
        """The qrels of ``split`` (``qrels/<split>.tsv``), read once."""
        if split not in self.qrels:
            if self.root is None:
                raise ValueError(f"split {split!r} is not loaded and this dataset has no root folder to read it from")
            self.qrels[split] = load_qrels(find_file(self.root / "qrels", f"{split}.tsv"), self.queries, self.corpus,
                                           header=self.qrels_header)
        return self.qrels[split]


def passage_text(doc: dict[str, str]) -> str:
    """The text a retriever sees (and a prompt shows) for a document: title, one space, body, as BEIR's dense
    baselines do. The one rule for every DataModule, index and prompt, so that a passage encoded for
    training is the passage searched and read later; deliberately not configurable."""
    title = (doc.get("title") or "").strip()
    return f"{title} {doc['text']}".strip() if title else doc["text"]
