"""Strict readers for BEIR-format datasets (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).

Every malformed row raises :class:`DataFormatError` naming the file, the 1-based line and the field;
nothing is dropped or guessed, so a number computed on the data is a number about all of it.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from training.records import DataFormatError, iter_lines, read_jsonl

log = logging.getLogger(__name__)
QRELS_HEADER = ["query-id", "corpus-id", "score"]


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, transparently decompressing ``.gz``."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


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
