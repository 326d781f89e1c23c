"""JSON lines in and out. In: the one strict reader of data files (BEIR corpora and queries, QA questions, task
problems), whose every error is a :class:`DataFormatError` naming the file, the line and the field. Out:
evaluation records, every rank's merged once (a distributed sampler pads the last ranks with repeats), written
as JSONL next to the run, and shown in TensorBoard's text tab. One home for what the evaluation modules (RAG,
query enhancement, self-correction) and the RL modules each did by hand."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from training.atomic_files import atomic_file


class DataFormatError(ValueError):
    """A data file is malformed. The message names the file, the line (an int; or a place such as ``"item 3"``
    of a JSON array) and the field."""

    def __init__(self, path: str | Path, line: int | str | None, field: str | None, problem: str):
        place = "" if line is None else f", line {line}" if isinstance(line, int) else f", {line}"
        super().__init__(f"{path}{place}" + (f", field '{field}'" if field else "") + f": {problem}")
        self.path, self.line, self.field = str(path), line, field


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


def check_field(path, line: int | str, row: dict, name: str, kind: type = str, required: bool = True):
    """``row[name]`` if it is a ``kind`` (``list``: a list of strings; a bool is no int), None if absent and not
    ``required``; else a :class:`DataFormatError` naming the file, line and field."""
    if name not in row:
        if required:
            raise DataFormatError(path, line, name, "missing")
        return None
    value = row[name]
    if kind is list and isinstance(value, list) and not all(isinstance(x, str) for x in value):
        raise DataFormatError(path, line, name, "expected a list of strings")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataFormatError(path, line, name, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path, required: dict[str, type] | None = None,
               skip_blank: bool = False) -> list[tuple[int, dict]]:
    """``(line_number, row)`` for each line of a JSONL file (``.gz`` decompressed), each row a JSON object with
    the ``required`` fields of the given types (:func:`check_field`). A blank line is an error (a truncated or
    hand-edited file should not pass unnoticed) unless ``skip_blank``; an empty file always is."""
    rows = []
    for number, line in iter_lines(path):
        if not line.strip():
            if skip_blank:
                continue
            raise DataFormatError(path, number, None, "blank line")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, number, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataFormatError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
        for field, kind in (required or {}).items():
            check_field(path, number, row, field, kind)
        rows.append((number, row))
    if not rows:
        raise DataFormatError(path, None, None, "file is empty")
    return rows


def first_of_each_id(ids: Sequence) -> list[int]:
    """Positions of the first occurrence of each id, in order (the later ones are a sampler's padding)."""
    seen, keep = set(), []
    for i, _id in enumerate(ids):
        if _id not in seen:
            seen.add(_id)
            keep.append(i)
    return keep


def merge_records(parts: list[list[dict]]) -> list[dict]:
    """The records of every rank (``parts`` in rank order) as one list, each ``id`` once."""
    flat = [r for part in parts for r in part]
    return [flat[i] for i in first_of_each_id([r["id"] for r in flat])]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """``records`` as JSON lines (UTF-8, one object per line), written atomically: a reader never sees half
    a file, and an interrupted write keeps the previous one."""
    path = Path(path)
    with atomic_file(path) as f:
        for r in records:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def code_block(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard's text tab renders Markdown: indentation keeps the
    model's text verbatim, newlines and ``*`` included)."""
    return "    " + str(text).replace("\n", "\n    ")


def log_texts(logger, tag: str, texts: Sequence[str], step: int | None = None) -> None:
    """Markdown ``texts`` in TensorBoard under ``tag``: one entry joined by rules at ``step``, or, with
    ``step`` None, one entry per text at steps 0, 1, ... (the examples of an evaluation). Nothing without a
    logger that writes text (no logger, CSV)."""
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    if experiment is None or not hasattr(experiment, "add_text") or not texts:
        return
    if step is None:
        for i, text in enumerate(texts):
            experiment.add_text(tag, text, global_step=i)
    else:
        experiment.add_text(tag, "\n\n---\n\n".join(texts), global_step=step)
