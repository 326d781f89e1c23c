"""Contriever training data: pairs of two independent random crops of the same document, from any
BEIR-format corpus, with no labels (retrieval.cropping). Evaluation (val/test) uses the dataset's qrels
through a :class:`datamodules.beir.BEIRDataModule`, so zero-shot and adapted models are scored alike.

A training batch has the same keys as a DPR batch: ``queries`` (first crops) and ``passages`` (second
crops), query i's positive being passage i; the other documents' crops are the in-batch negatives.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import Dataset

from datamodules.beir import BEIRDataModule
from datamodules.resumable import DrawCounters, StatefulDataLoader, train_loader
from retrieval.cropping import crop_pair, words


class CropPairs(DrawCounters, Dataset):
    """One item per document: two crops drawn with an RNG seeded by (seed, index, draw count), so pairs
    are reproducible and new in every epoch."""

    def __init__(self, doc_ids: list[str], texts: list[str], ratio_min: float, ratio_max: float,
                 deletion_prob: float, seed: int = 0):
        self.doc_ids, self.texts = doc_ids, texts
        self.ratio_min, self.ratio_max, self.deletion_prob = ratio_min, ratio_max, deletion_prob
        self.init_draws(len(doc_ids), seed)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __getitem__(self, i: int) -> dict:
        rng = self.draw_rng(i)
        query, key = crop_pair(words(self.texts[i]), rng, self.ratio_min, self.ratio_max, self.deletion_prob)
        return {"doc_id": self.doc_ids[i], "query": " ".join(query), "passage": " ".join(key)}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        return {"doc_ids": [it["doc_id"] for it in items], "queries": [it["query"] for it in items],
                "passages": [it["passage"] for it in items]}


class CropPairsDataModule(L.LightningDataModule):
    """Args:
        data_dir: a BEIR dataset; its corpus is the training data, its qrels only serve evaluation.
        ratio_min / ratio_max: crop length as a fraction of the document (Contriever: 0.1 to 0.5).
        deletion_prob: token (word) deletion probability applied to each crop (0 = none; the paper tries 0.1).
        min_words: documents with fewer words are not used for training (listed in ``skipped_doc_ids``
            and counted in the log), since a pair of crops of 1-2 words carries little signal.
        val_split / test_split: qrels for evaluation, as in BEIRDataModule.
    """

    def __init__(self, data_dir: str = "data/scifact", ratio_min: float = 0.1, ratio_max: float = 0.5,
                 deletion_prob: float = 0.0, min_words: int = 1, val_split: str | None = None,
                 test_split: str | None = "test", batch_size: int = 64, eval_batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if not 0 < ratio_min <= ratio_max <= 1:
            raise ValueError(f"CropPairsDataModule: need 0 < ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
        self.beir: BEIRDataModule | None = None
        self.train_dataset: CropPairs | None = None
        self.skipped_doc_ids: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.beir is None:
            # built here, not in __init__: Lightning's save_hyperparameters would read this __init__'s arguments
            self.beir = BEIRDataModule(hp.data_dir, train_split=None, val_split=hp.val_split, test_split=hp.test_split,
                                       num_negatives=0, eval_batch_size=hp.eval_batch_size,
                                       num_workers=hp.num_workers, seed=hp.seed)
        self.beir.setup(stage)
        self.doc_ids, self.passages = self.beir.doc_ids, self.beir.passages
        if self.train_dataset is None:
            keep = [d for d in self.doc_ids if len(words(self.passages[d])) >= hp.min_words]
            self.skipped_doc_ids = [d for d in self.doc_ids if len(words(self.passages[d])) < hp.min_words]
            if not keep:
                raise ValueError(f"CropPairsDataModule: no document in {hp.data_dir} has >= {hp.min_words} words")
            self.train_dataset = CropPairs(keep, [self.passages[d] for d in keep], hp.ratio_min, hp.ratio_max,
                                           hp.deletion_prob, hp.seed)

    def train_dataloader(self) -> StatefulDataLoader:
        hp = self.hparams
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(self.train_dataset) // world < hp.batch_size:
            raise ValueError(
                f"data.batch_size {hp.batch_size} is larger than the {len(self.train_dataset)} training documents of "
                f"{hp.data_dir}{f', {len(self.train_dataset) // world} per process on {world}' if world > 1 else ''}: "
                f"every batch must be full (drop_last), so no training step would run; set "
                f"--data.init_args.batch_size {len(self.train_dataset) // world} or less")
        return train_loader(self.train_dataset, hp.batch_size, hp.seed, self.trainer, drop_last=True,
                            collate_fn=CropPairs.collate, num_workers=hp.num_workers)

    def val_dataloader(self):
        return self.beir.val_dataloader()

    def test_dataloader(self):
        return self.beir.test_dataloader()

    def eval_qrels(self, stage: str) -> dict[str, dict[str, int]]:
        return self.beir.eval_qrels(stage)
