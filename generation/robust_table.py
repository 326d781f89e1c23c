"""RetRobust's evaluation table (Yoran et al., 2024): every test question answered closed-book, with one
passage of each context kind (the top-1, a low-ranked one, a random one), and with each of those read
through the NLI filter; EM / F1 per (row, column), rows being the models compared (``base``: adapters off,
``trained``).

    nli_<kind> = read answer with that passage   if the passage entails "question + answer"
                 closed-book answer              otherwise
"""

from __future__ import annotations

from collections.abc import Sequence

from generation.nli import nli_hypothesis, select_answers
from generation.qa_metrics import exact_match, f1_score
from generation.rag import read

KINDS = ("top1", "low_rank", "random")
COLUMNS = ("closed_book", *KINDS, *(f"nli_{k}" for k in KINDS))


def answer_columns(model, tokenizer, questions: Sequence[str], contexts: dict[str, Sequence[str]], *, prompt_format,
                   judge=None, nli_kinds: Sequence[str] = (), max_new_tokens: int = 24,
                   batch_size: int = 8) -> dict[str, list[str]]:
    """Greedy answers of ``model`` in every column: ``closed_book``, one per context kind (``contexts[kind]``:
    one passage per question), and ``nli_<kind>`` for the kinds in ``nli_kinds`` (``judge.entails``)."""
    kw = dict(prompt_format=prompt_format, max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = {"closed_book": read(model, tokenizer, questions, None, **kw).answers}           # 1. no retrieval
    for kind in KINDS:                                                                     # 2. one passage each
        out[kind] = read(model, tokenizer, questions, [[p] for p in contexts[kind]], **kw).answers
    for kind in nli_kinds:                                          # 3. NLI filter: keep the read answer if entailed
        entailed = judge.entails(contexts[kind], [nli_hypothesis(q, a) for q, a in zip(questions, out[kind])])
        out[f"nli_{kind}"] = select_answers(entailed, out[kind], out["closed_book"])
    return out


def score_columns(row: str, answers: dict[str, list[str]], gold: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """Per question, ``{"<row>/<column>/em": 0 or 1, "<row>/<column>/f1": F1}`` (SQuAD normalisation)."""
    scores = [{} for _ in gold]
    for column, preds in answers.items():
        for s, p, g in zip(scores, preds, gold):
            s.update({f"{row}/{column}/em": exact_match(p, g), f"{row}/{column}/f1": f1_score(p, g)})
    return scores


def table_means(records: Sequence[dict]) -> dict[str, float]:
    """The mean of every score key over the questions' records (``id`` left out)."""
    keys = [k for k in (records[0] if records else {}) if k != "id"]
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


def table_markdown(means: dict[str, float], rows: Sequence[str]) -> str:
    """The RetRobust table: one line per row, EM (F1) per column."""
    columns = [c for c in COLUMNS if any(f"{r}/{c}/em" in means for r in rows)]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        cells = [f"{means[f'{r}/{c}/em']:.3f} ({means[f'{r}/{c}/f1']:.3f})" if f"{r}/{c}/em" in means else "-"
                 for c in columns]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nEM (F1); closed_book = no retrieval; nli_<kind>: that read with the NLI filter.\n"
