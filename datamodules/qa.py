"""Open-domain QA data: question/answers JSONL files (NQ-open dev, EfficientQA dev, the NQ passage pool's
splits) and a passage pool to retrieve from, for the retrieval-augmented inference methods.

The NQ passage pool (``data/nq_pool``) is built from the gold Wikipedia passages of
``data/nq_open/nq-open-oracle.jsonl.gz`` by :func:`build_nq_pool` (``python -m datamodules.qa --build-pool``):
identical passages merged, questions split train/dev/test with a fixed seed, written both as QA JSONL and
in BEIR format (so the BEIR data module and the retrieval evaluator can score retrieval on it too).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from datamodules.beir import resolve_data_dir
from datamodules.resumable import StatefulDataLoader, train_loader
from retrieval.beir import DataFormatError, load_corpus, passage_text, read_jsonl


def needs_split(split: str, stage: str | None) -> bool:
    """Whether ``stage`` reads ``split``: only fit trains, so an evaluation-only run never reads (nor fails on)
    the training file; every stage reads the evaluation files (fit tests after training: a broken test
    file stops it before training)."""
    return split != "train" or stage in (None, "fit")


def read_qa_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows ``{"question": str, "answers": [str, ...]}`` (NQ-open's ``"answer"`` is accepted as well);
    optional ``"id"`` (default ``<file stem>-<line>``) and ``"gold_id"``. Errors name file, line, field; an id
    seen before in the file is one (results and training draws are keyed by id)."""
    out, first = [], {}
    for line, row in read_jsonl(path, {"question": str}):
        field = "answers" if "answers" in row else "answer" if "answer" in row else None
        if field is None:
            raise DataFormatError(path, line, "answers", "missing (neither 'answers' nor 'answer')")
        answers = row[field]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataFormatError(path, line, field, f"expected a non-empty list of non-empty strings, got {answers!r}")
        if not row["question"].strip():
            raise DataFormatError(path, line, "question", "empty")
        qid = str(row.get("id", f"{Path(path).name.split('.')[0]}-{line}"))
        if qid in first:
            raise DataFormatError(path, line, "id", f"duplicate id {qid!r} (first at line {first[qid]})")
        first[qid] = line
        out.append({"id": qid, "question": row["question"], "answers": answers, "gold_id": row.get("gold_id")})
        if limit is not None and len(out) >= limit:
            break
    return out


class QADataset(Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def collate_qa(rows: list[dict]) -> dict[str, list]:
    return {"ids": [r["id"] for r in rows], "questions": [r["question"] for r in rows],
            "answers": [r["answers"] for r in rows], "gold_ids": [r.get("gold_id") for r in rows]}


class QADataModule(L.LightningDataModule):
    """Questions with gold answers and a passage pool to retrieve from.

    Args:
        test_file / val_file / train_file: QA JSONL files (relative paths from the project root).
        corpus: a BEIR corpus file or folder (``corpus.jsonl[.gz]``) with the passages; None for
            closed-book methods only. After ``setup``: ``corpus`` ({id: {title, text}}), ``passages``
            ({id: title + " " + text}, ``retrieval.beir.passage_text``) and ``doc_ids``.
        limit: use only the first ``limit`` questions of each file (quick runs; None = all).
        batch_size: questions per step.
        seed: the training order (each epoch's by (seed, epoch)).
    """

    def __init__(self, test_file: str = "data/nq_pool/test.jsonl", val_file: str | None = None,
                 train_file: str | None = None, corpus: str | None = "data/nq_pool", limit: int | None = None,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.splits: dict[str, list[dict]] = {}
        self.corpus: dict[str, dict[str, str]] = {}
        self.passages: dict[str, str] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for name, file in (("train", hp.train_file), ("val", hp.val_file), ("test", hp.test_file)):
            if file and name not in self.splits and needs_split(name, stage):
                self.splits[name] = read_qa_jsonl(resolve_data_dir(file), hp.limit)
        if hp.corpus and not self.corpus:
            self.corpus = load_corpus(_corpus_file(resolve_data_dir(hp.corpus)))
            # the same title + text rule as the BEIR DataModule and the search layer
            self.passages = {pid: passage_text(doc) for pid, doc in self.corpus.items()}

    @property
    def doc_ids(self) -> list[str]:
        """The passage pool's ids, in file order (what ``callbacks.IndexRefresh`` encodes)."""
        return list(self.passages)

    def _dataset(self, split: str) -> QADataset:
        if split not in self.splits:
            raise ValueError(f"QADataModule: no {split} file configured")
        return QADataset(self.splits[split])

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=self.hparams.batch_size, collate_fn=collate_qa,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> StatefulDataLoader:
        hp = self.hparams
        return train_loader(self._dataset("train"), hp.batch_size, hp.seed, self.trainer, collate_fn=collate_qa,
                            num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _corpus_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no corpus.jsonl or corpus.jsonl.gz")


def build_nq_pool(oracle: str | Path, out_dir: str | Path, seed: int = 0, n_dev: int = 300,
                  n_test: int = 300) -> dict[str, int]:
    """Write the NQ passage pool from the lost-in-the-middle oracle file (one gold passage per question).

    Passages with the same title and text are merged (one id, ``nq-<n>`` in order of first appearance);
    the questions (``q<line-1>``) are shuffled with ``random.Random(seed)``; the first ``n_test`` form
    the test split, the next ``n_dev`` the dev split, the rest the train split (each split file is in
    line order). Returns the counts."""
    oracle, out = Path(oracle), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    passage_id: dict[tuple[str, str], str] = {}
    questions = []
    with gzip.open(oracle, "rt", encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            row = json.loads(text)
            ctxs = row.get("ctxs")
            if not isinstance(ctxs, list) or len(ctxs) != 1:
                raise DataFormatError(oracle, line, "ctxs", "expected exactly one gold passage")
            key = (ctxs[0]["title"], ctxs[0]["text"])
            pid = passage_id.setdefault(key, f"nq-{len(passage_id)}")
            questions.append({"id": f"q{line - 1}", "question": row["question"], "answers": row["answers"],
                              "gold_id": pid})
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    splits = {"test": sorted(order[:n_test]), "dev": sorted(order[n_test:n_test + n_dev]),
              "train": sorted(order[n_test + n_dev:])}
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for (title, text), pid in passage_id.items():
            f.write(json.dumps({"_id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"_id": q["id"], "text": q["question"]}, ensure_ascii=False) + "\n")
    for name, idx in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps(questions[i], ensure_ascii=False) + "\n")
        with open(out / "qrels" / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in idx:
                f.write(f"{questions[i]['id']}\t{questions[i]['gold_id']}\t1\n")
    return {"passages": len(passage_id), "questions": len(questions), **{k: len(v) for k, v in splits.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the NQ passage pool (data/nq_pool).")
    parser.add_argument("--build-pool", action="store_true")
    parser.add_argument("--oracle", default="data/nq_open/nq-open-oracle.jsonl.gz")
    parser.add_argument("--out", default="data/nq_pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-dev", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    args = parser.parse_args(argv)
    if not args.build_pool:
        parser.error("nothing to do: pass --build-pool")
    print(build_nq_pool(resolve_data_dir(args.oracle), resolve_data_dir(args.out), args.seed, args.n_dev, args.n_test))


if __name__ == "__main__":
    main()
