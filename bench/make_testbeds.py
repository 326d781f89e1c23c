"""A synthetic testbed with headroom for the methods' effects (issue 25; predictions in
docs/evidence/effects_preregistration.md), written in the NQ pool's format (QA JSONL splits + a BEIR corpus,
queries and qrels) so the shipped data modules read them unchanged:

- ``data/arith_facts`` (RetRobust): addition questions "What is 37 + 45?" over a corpus of every fact
  "37 + 45 = 82." with both operands in [10, 99]. SmolLM2-135M answers many closed-book (chance is ~0); BM25's
  top-1 is the question's own fact (both operands match), its ranks 11-20 share one operand and state another
  sum (misleading), and another question's fact is irrelevant.
  The same testbed serves REPLUG LSR: all-MiniLM-L6-v2 reads numbers poorly (gold recall@1 0.557 on the 300
  test questions), while the LM's likelihood of the sum rises when a fact stating it is in context.

- ``data/arith_wrong`` (RetRobust, second design): questions on operands less than 10 apart, over the facts
  plus, for every pair, notes that state a wrong sum for the same operands ("Note: 37 + 45 = 83."), which BM25
  ranks right after the pair's true facts (ranks 3-8): misleading context for a model that copies.

    python bench/make_testbeds.py            # rewrites identical files (fixed seeds)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLITS = {"train": 1000, "dev": 100, "test": 300}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_testbed(out: Path, corpus: list[dict], questions: list[dict], provenance: str) -> None:
    """Corpus, the three QA splits (``SPLITS`` questions each, disjoint), BEIR queries and qrels."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    write_jsonl(out / "corpus.jsonl", corpus)
    write_jsonl(out / "queries.jsonl", [{"_id": q["id"], "text": q["question"]} for q in questions])
    start = 0
    for split, n in SPLITS.items():
        rows = questions[start:start + n]
        start += n
        write_jsonl(out / f"{split}.jsonl", rows)
        with open(out / "qrels" / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["query-id", "corpus-id", "score"])
            w.writerows([[q["id"], q["gold_id"], 1] for q in rows])
    (out / "PROVENANCE.md").write_text(provenance)


def arith_facts(seed: int = 0) -> tuple[list[dict], list[dict]]:
    corpus = [{"_id": f"f{a}-{b}", "title": "", "text": f"{a} + {b} = {a + b}."}
              for a in range(10, 100) for b in range(10, 100)]
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    questions = [{"id": f"q{i}", "question": f"What is {a} + {b}?", "answers": [str(a + b)], "gold_id": f"f{a}-{b}"}
                 for i, (a, b) in enumerate(pairs[:sum(SPLITS.values())])]
    return corpus, questions


WRONG_PER_PAIR = 3  # wrong-sum notes per ordered pair


def arith_wrong(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The facts of ``arith_facts`` plus, for every ordered pair, ``WRONG_PER_PAIR`` notes stating a wrong sum for
    the same operands ("Note: 37 + 45 = 83."), the sum off by 1 to 10 either way; questions on pairs whose
    operands differ by less than 10. For those, no other fact holds both numbers (a fact "37 + x = 45" would
    need x < 10), so BM25 ranks the pair's two true facts ("37 + 45 = 82.", "45 + 37 = 82.": both operands, 3
    tokens) first and notes holding both numbers (the pair's own 6, one token longer) next: a context drawn from
    ranks 3-8 is a relevant-looking passage that states a wrong answer, what a model that copies follows."""
    corpus, _ = arith_facts(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if abs(a - b) < 10]
    random.Random(seed).shuffle(pairs)
    questions = [{"id": f"q{i}", "question": f"What is {a} + {b}?", "answers": [str(a + b)], "gold_id": f"f{a}-{b}"}
                 for i, (a, b) in enumerate(pairs[:sum(SPLITS.values())])]
    rng = random.Random(seed + 1)
    for a in range(10, 100):
        for b in range(10, 100):
            offsets = rng.sample([d for d in range(-10, 11) if d != 0], WRONG_PER_PAIR)
            corpus += [{"_id": f"w{a}-{b}-{k}", "title": "", "text": f"Note: {a} + {b} = {a + b + d}."}
                       for k, d in enumerate(offsets)]
    return corpus, questions


PROVENANCE = """# {name} (generated)

Built by `python bench/make_testbeds.py` (function `{func}`, seed 0); re-running it rewrites identical files.
Purpose and predictions: `docs/evidence/effects_preregistration.md`.

- {what}
- Questions: {n_train} train, {n_dev} dev, {n_test} test (disjoint), each with its one gold fact (`gold_id`,
  `qrels/<split>.tsv`) and its answer.
- Format: QA JSONL splits `{{id, question, answers, gold_id}}`, BEIR `corpus.jsonl` `{{_id, title, text}}` and
  `queries.jsonl`, as `data/nq_pool`.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "data"))
    args = ap.parse_args(argv)
    sizes = {"n_train": SPLITS["train"], "n_dev": SPLITS["dev"], "n_test": SPLITS["test"]}
    corpus, questions = arith_facts()
    write_testbed(Path(args.out) / "arith_facts", corpus, questions, PROVENANCE.format(
        name="Addition facts", func="arith_facts", what=f"Corpus: {len(corpus):,} facts `a + b = c.` for a, b in "
        "[10, 99]; questions `What is a + b?` for pairs drawn without replacement.", **sizes))
    print(f"wrote {args.out}/arith_facts")
    corpus, questions = arith_wrong()
    write_testbed(Path(args.out) / "arith_wrong", corpus, questions, PROVENANCE.format(
        name="Addition facts with wrong-sum notes", func="arith_wrong", what=f"Corpus: {len(corpus):,} passages: "
        f"the 8,100 facts `a + b = c.` of `arith_facts` (a, b in [10, 99]) and, for every ordered pair, "
        f"{WRONG_PER_PAIR} notes `Note: a + b = c'.` with c' = c + d, d drawn from +-1..10 without 0 (seed 1); "
        "questions `What is a + b?` on pairs with |a - b| < 10, drawn without replacement.", **sizes))
    print(f"wrote {args.out}/arith_wrong")


if __name__ == "__main__":
    main()
