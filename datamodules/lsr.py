"""Data for REPLUG LSR: each example is an input x, the gold continuation y the frozen LM scores, the
passages retrieval must not return for it, and (QA) the gold answers and passage for evaluation.

- :class:`LSRQADataModule`: open-domain QA over a passage pool (``data/nq_pool``): x = the question,
  y = its first gold answer; the candidate corpus is the pool.
- :class:`LSRLanguageModelingDataModule`: language modelling as in the paper: passages of the pool are
  cut in two at the middle word, x = the first half (title included, it opens the document), y = the
  second half; retrieval searches the whole pool except the query's own passage.

Both expose ``passages`` ({id: text}) and ``doc_ids`` for ``callbacks.IndexRefresh`` and the module's
index. A batch is ``{"ids", "inputs", "targets", "exclude", "gold_ids"}`` plus ``"answers"`` for QA.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from datamodules.beir import resolve_data_dir
from datamodules.qa import QADataset, _corpus_file, needs_split, read_qa_jsonl
from datamodules.resumable import StatefulDataLoader, train_loader
from retrieval.beir import load_corpus, passage_text


def collate_lsr(rows: list[dict]) -> dict[str, list]:
    batch = {"ids": [r["id"] for r in rows], "inputs": [r["input"] for r in rows],
             "targets": [r["target"] for r in rows], "exclude": [r["exclude"] for r in rows],
             "gold_ids": [r.get("gold_id") for r in rows]}
    if all("answers" in r for r in rows):
        batch["answers"] = [r["answers"] for r in rows]
    return batch


def split_passage(text: str) -> tuple[str, str]:
    """(x, y): the words of ``text`` before and after its middle word (x gets the shorter half)."""
    words = text.split()
    if len(words) < 2:
        raise ValueError(f"split_passage: need at least two words, got {text!r}")
    half = len(words) // 2
    return " ".join(words[:half]), " ".join(words[half:])


class _LSRData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.splits: dict[str, list[dict]] = {}
        self.passages: dict[str, str] = {}

    @property
    def doc_ids(self) -> list[str]:
        """The corpus ids, in file order (what ``callbacks.IndexRefresh`` encodes)."""
        return list(self.passages)

    def _load_corpus(self) -> dict[str, dict]:
        corpus = load_corpus(_corpus_file(resolve_data_dir(self.hparams.corpus)))
        self.passages = {pid: passage_text(doc) for pid, doc in corpus.items()}
        return corpus

    def _dataset(self, split: str) -> QADataset:
        if not self.splits.get(split):
            raise ValueError(f"{type(self).__name__}: no {split} examples configured")
        return QADataset(self.splits[split])

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=batch_size, collate_fn=collate_lsr,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> StatefulDataLoader:
        hp = self.hparams
        return train_loader(self._dataset("train"), hp.batch_size, hp.seed, self.trainer, collate_fn=collate_lsr,
                            num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)


class LSRQADataModule(_LSRData):
    """Args:
        corpus: BEIR corpus file or folder (the candidate passages).
        train_file / val_file / test_file: QA JSONL (``question``, ``answers``, optional ``gold_id``: the
            passage nDCG is computed against).
        train_limit / val_limit / test_limit: the first N questions of each file (None = all).
        batch_size / eval_batch_size: questions per training / evaluation step.
        seed: the training order (each epoch's by (seed, epoch)).
    """

    def __init__(self, corpus: str = "data/nq_pool", train_file: str | None = "data/nq_pool/train.jsonl",
                 val_file: str | None = None, test_file: str | None = "data/nq_pool/test.jsonl",
                 train_limit: int | None = None, val_limit: int | None = None, test_limit: int | None = None,
                 batch_size: int = 8, eval_batch_size: int = 16, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if not self.passages:
            self._load_corpus()
        for name, file, limit in (("train", hp.train_file, hp.train_limit), ("val", hp.val_file, hp.val_limit),
                                  ("test", hp.test_file, hp.test_limit)):
            if not file or name in self.splits or not needs_split(name, stage):
                continue
            path = resolve_data_dir(file)
            rows = read_qa_jsonl(path, limit)
            for r in rows:
                if r["gold_id"] is not None and r["gold_id"] not in self.passages:
                    raise ValueError(f"{path}: question {r['id']!r}: gold_id {r['gold_id']!r} is not in the corpus "
                                     f"{hp.corpus}")
            self.splits[name] = [{"id": r["id"], "input": r["question"], "target": r["answers"][0],
                                  "answers": r["answers"], "gold_id": r["gold_id"], "exclude": []} for r in rows]


class LSRLanguageModelingDataModule(_LSRData):
    """Args:
        corpus: BEIR corpus file or folder; every passage is a retrieval candidate, and passages with at
            least ``min_words`` words can be queries.
        num_train / num_val / num_test: query passages per split, drawn without overlap after a shuffle
            with ``seed`` (test first, then val, then train, so the test set does not depend on num_train);
            ``seed`` also orders the training epochs.
        batch_size / eval_batch_size: queries per training / evaluation step.
    """

    def __init__(self, corpus: str = "data/nq_pool", num_train: int = 512, num_val: int = 0, num_test: int = 100,
                 min_words: int = 40, seed: int = 0, batch_size: int = 8, eval_batch_size: int = 16,
                 num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.passages:
            return
        hp = self.hparams
        self._load_corpus()
        eligible = [pid for pid, text in self.passages.items() if len(text.split()) >= hp.min_words]
        need = hp.num_train + hp.num_val + hp.num_test
        if need > len(eligible):
            raise ValueError(f"{Path(hp.corpus)}: {len(eligible)} passages have at least {hp.min_words} words, "
                             f"fewer than num_train + num_val + num_test = {need}")
        random.Random(hp.seed).shuffle(eligible)
        bounds = {"test": (0, hp.num_test), "val": (hp.num_test, hp.num_test + hp.num_val),
                  "train": (hp.num_test + hp.num_val, need)}
        for name, (lo, hi) in bounds.items():
            rows = []
            for pid in eligible[lo:hi]:
                x, y = split_passage(self.passages[pid])
                rows.append({"id": pid, "input": x, "target": y, "gold_id": None, "exclude": [pid]})
            self.splits[name] = rows
