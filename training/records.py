"""Evaluation records: every rank's records merged once (a distributed sampler pads the last ranks with
repeats), written as JSONL next to the run, and shown in TensorBoard's text tab. One home for what the
evaluation modules (RAG, query enhancement, self-correction) and the RL modules each did by hand."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from training.atomic_files import atomic_file


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
