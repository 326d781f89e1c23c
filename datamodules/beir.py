"""BEIR-format data for retrievers: DPR training triples with BM25 hard negatives, and corpus/query
loaders for evaluation (dataloader 0 = corpus, 1 = queries; :class:`callbacks.RetrievalEvaluator`
ranks and scores them)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import DrawCounters, StatefulDataLoader, train_loader
from retrieval.beir import BeirDataset, DataFormatError, find_file, passage_text
from retrieval.bm25 import BM25, mine_hard_negatives

PROJECT_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def resolve_data_dir(path: str | Path) -> Path:
    """Relative data paths are taken from the project root, so configs work from any directory."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else PROJECT_ROOT / path


class TextsDataset(Dataset):
    """(id, text) pairs for encoding."""

    def __init__(self, ids: list[str], texts: list[str]):
        self.ids, self.texts = ids, texts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.ids[i], self.texts[i]


def collate_texts(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {"ids": [i for i, _ in items], "texts": [t for _, t in items]}


class ContrastivePairs(DrawCounters, Dataset):
    """One item per training query: the query, one of its positives and its hard negatives.

    Each fetch draws the positive (when a query has several) and ``num_negatives`` negatives from the
    query's mined window with an RNG seeded by (seed, index, draw count): reproducible, and different
    from one epoch to the next. The counters are checkpointed (``state_dict``), hence loaded without
    workers (datamodules.resumable)."""

    def __init__(self, query_ids: list[str], queries: dict[str, str], positives: dict[str, list[str]],
                 negatives: dict[str, list[str]], passages: dict[str, str], num_negatives: int, seed: int = 0):
        self.query_ids, self.queries, self.positives = query_ids, queries, positives
        self.negatives, self.passages, self.num_negatives = negatives, passages, num_negatives
        self.init_draws(len(query_ids), seed)

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitem__(self, i: int) -> dict:
        qid = self.query_ids[i]
        rng = self.draw_rng(i)
        pos = rng.choice(self.positives[qid])
        window = self.negatives.get(qid, [])
        negs = rng.sample(window, min(self.num_negatives, len(window)))
        return {"query_id": qid, "query": self.queries[qid], "positive_id": pos, "negative_ids": negs,
                "all_positives": set(self.positives[qid])}

    def collate(self, items: list[dict]) -> dict:
        """Passages are laid out [positive_0 .. positive_{B-1}, negatives of 0, negatives of 1, ...];
        query i's target is passage i. ``exclude[i, j]`` marks passage j as another copy of one of
        query i's positives (a false negative), kept out of its softmax denominator."""
        passage_ids = [it["positive_id"] for it in items] + [n for it in items for n in it["negative_ids"]]
        exclude = torch.tensor([[j != i and pid in it["all_positives"] for j, pid in enumerate(passage_ids)]
                                for i, it in enumerate(items)], dtype=torch.bool)
        return {"query_ids": [it["query_id"] for it in items], "queries": [it["query"] for it in items],
                "passage_ids": passage_ids, "passages": [self.passages[p] for p in passage_ids],
                "exclude": exclude}


class BEIRDataModule(L.LightningDataModule):
    """Any BEIR dataset on disk: ``data_dir`` with corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv.

    Training uses ``train_split`` with ``num_negatives`` BM25 hard negatives per query, sampled from the
    BM25 ranks ``[negatives_skip_top, negatives_depth)`` that are not judged relevant. Validation uses
    ``val_split`` if given, or a ``dev_fraction`` of the training queries held out (then not trained
    on); with neither there is no validation. Testing uses ``test_split``. Each stage reads only the qrels it
    needs: a test-only run (``python train.py test ...``) needs no training qrels.

    ``qrels_header``: whether the qrels files start with the line ``query-id<TAB>corpus-id<TAB>score`` (BEIR's
    format); set false for copies without it."""

    def __init__(self, data_dir: str = "data/scifact", train_split: str | None = "train",
                 val_split: str | None = None, test_split: str | None = "test", dev_fraction: float = 0.0,
                 num_negatives: int = 1, negatives_depth: int = 30, negatives_skip_top: int = 0,
                 bm25_k1: float = 0.9, bm25_b: float = 0.4, batch_size: int = 32, eval_batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, qrels_header: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.data: BeirDataset | None = None
        self.train_dataset: ContrastivePairs | None = None
        self.train_qrels: dict[str, dict[str, int]] | None = None
        self.qrels: dict[str, dict[str, dict[str, int]]] = {}

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.data is None:
            self.data = BeirDataset.load(resolve_data_dir(hp.data_dir), splits=(), qrels_header=hp.qrels_header)
            self.passages = {d: passage_text(doc) for d, doc in self.data.corpus.items()}
            self.doc_ids = list(self.passages)
        if stage in (None, "fit", "validate"):
            self._setup_train_and_val(needs_train=stage in (None, "fit"))
        # fit reads the test qrels too, so that a broken test file stops the run before training, not after
        if stage in (None, "fit", "test") and hp.test_split:
            self.qrels["test"] = self.data.load_split(hp.test_split)

    def _setup_train_and_val(self, needs_train: bool) -> None:
        hp = self.hparams
        if hp.val_split:
            self.qrels["val"] = self.data.load_split(hp.val_split)
        if hp.train_split and (needs_train or hp.dev_fraction > 0) and self.train_qrels is None:
            train_qrels = self.data.load_split(hp.train_split)
            qids = sorted(train_qrels)
            if hp.dev_fraction > 0:
                random.Random(hp.seed).shuffle(qids)
                n_dev = max(1, round(hp.dev_fraction * len(qids)))
                self.qrels["val"] = {q: train_qrels[q] for q in sorted(qids[:n_dev])}
                qids = sorted(qids[n_dev:])
            self.train_qrels = {q: train_qrels[q] for q in qids}

    def _qrels_path(self, split: str) -> str:
        return str(find_file(resolve_data_dir(self.hparams.data_dir) / "qrels", f"{split}.tsv"))

    def _build_train_dataset(self) -> ContrastivePairs:
        hp = self.hparams
        positives = {q: sorted(d for d, rel in docs.items() if rel > 0) for q, docs in self.train_qrels.items()}
        without = sorted(q for q, p in positives.items() if not p)
        positives = {q: p for q, p in positives.items() if p}
        if not positives:
            raise DataFormatError(self._qrels_path(hp.train_split), None, "score",
                                  f"none of the {len(self.train_qrels)} training queries has a judgement with score > 0 "
                                  "(a positive passage), so there is nothing to train on")
        if without:
            log.info("%d of %d training queries have no judgement with score > 0 and are not trained on (e.g. %s)",
                     len(without), len(self.train_qrels), ", ".join(without[:3]))
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(positives) // world < hp.batch_size:
            raise ValueError(
                f"data.batch_size {hp.batch_size} is larger than the {len(positives)} training queries with a positive "
                f"in {self._qrels_path(hp.train_split)}"
                f"{f' (after holding out dev_fraction {hp.dev_fraction})' if hp.dev_fraction > 0 else ''}"
                f"{f', {len(positives) // world} per process on {world}' if world > 1 else ''}: every batch must be "
                f"full (drop_last), so no training step would run; set --data.init_args.batch_size "
                f"{len(positives) // world} or less")
        negatives: dict[str, list[str]] = {}
        if hp.num_negatives > 0:
            bm25 = BM25(self.doc_ids, [self.passages[d] for d in self.doc_ids], k1=hp.bm25_k1, b=hp.bm25_b)
            qids = list(positives)
            ranking = bm25.search([self.data.queries[q] for q in qids], k=hp.negatives_depth)
            mined = mine_hard_negatives(ranking, [set(self.train_qrels[q]) for q in qids], num_negatives=hp.negatives_depth,
                                        depth=hp.negatives_depth, skip_top=hp.negatives_skip_top)
            negatives = dict(zip(qids, mined))
        return ContrastivePairs(sorted(positives), self.data.queries, positives, negatives, self.passages,
                                hp.num_negatives, hp.seed)

    # -- loaders --------------------------------------------------------------------------------
    def train_dataloader(self) -> StatefulDataLoader:
        if not self.hparams.train_split:
            raise ValueError("BEIRDataModule: train_split is None, so there is nothing to train on")
        if self.train_dataset is None:
            self.train_dataset = self._build_train_dataset()
        return train_loader(self.train_dataset, self.hparams.batch_size, self.hparams.seed, self.trainer,
                            drop_last=True, collate_fn=self.train_dataset.collate, num_workers=self.hparams.num_workers)

    def _eval_loaders(self, qrels: dict[str, dict[str, int]]) -> list[DataLoader]:
        qids = sorted(qrels)
        # Longest first, so each batch pads to similar lengths (the order does not change the ranking).
        docs = sorted(self.doc_ids, key=lambda d: -len(self.passages[d]))
        kw = dict(batch_size=self.hparams.eval_batch_size, collate_fn=collate_texts, num_workers=self.hparams.num_workers)
        return [DataLoader(TextsDataset(docs, [self.passages[d] for d in docs]), **kw),
                DataLoader(TextsDataset(qids, [self.data.queries[q] for q in qids]), **kw)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.qrels["val"]) if "val" in self.qrels else []

    def test_dataloader(self) -> list[DataLoader]:
        if not self.hparams.test_split:
            raise ValueError("BEIRDataModule: test_split is None, so there is nothing to test on")
        return self._eval_loaders(self.qrels["test"])

    def eval_qrels(self, stage: str) -> dict[str, dict[str, int]]:
        """Judgements for the queries of ``stage`` ('val' or 'test'), for the evaluator callback."""
        return self.qrels[stage]
