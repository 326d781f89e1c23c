"""QA prompts for RL (Search-R1): questions with gold answers, read with the QA reader of
``datamodules.qa`` (the NQ passage pool's splits by default; its corpus is the search tool's corpus,
configured on the module's ``search``).

The training loader yields batches of questions (the module samples G rollouts per question and renders
the prompt with the policy's chat template); validation/test loaders yield held-out questions for
greedy evaluation. Batches are ``{"id": [...], "question": [...], "answers": [[...], ...]}``.
"""

from __future__ import annotations

import random

import lightning as L
from torch.utils.data import DataLoader

from datamodules.beir import resolve_data_dir
from datamodules.qa import needs_split, read_qa_jsonl
from datamodules.resumable import StatefulDataLoader, train_loader


def collate(rows: list[dict]) -> dict:
    return {"id": [r["id"] for r in rows], "question": [r["question"] for r in rows],
            "answers": [r["answers"] for r in rows]}


class RLPromptDataModule(L.LightningDataModule):
    """Args:
        train_file / val_file / test_file: QA JSON-lines files (val/test optional; relative paths are
            taken from the project root).
        batch_size: questions per training step (each gets ``group_size`` rollouts in the module).
        eval_batch_size: questions per evaluation batch.
        limit_train / limit_val / limit_test: only the first N questions of a file (CPU-sized runs).
        seed: the order of the training questions (shuffled once, then each epoch by (seed, epoch)).
    """

    def __init__(self, train_file: str = "data/nq_pool/train.jsonl", val_file: str | None = None,
                 test_file: str | None = "data/nq_pool/test.jsonl", batch_size: int = 4, eval_batch_size: int = 8,
                 limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
                 seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.rows: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split, file, limit in (("train", hp.train_file, hp.limit_train), ("val", hp.val_file, hp.limit_val),
                                   ("test", hp.test_file, hp.limit_test)):
            if file and split not in self.rows and needs_split(split, stage):
                self.rows[split] = read_qa_jsonl(resolve_data_dir(file), limit)
                if split == "train":
                    random.Random(hp.seed).shuffle(self.rows[split])

    def train_dataloader(self) -> StatefulDataLoader:
        rows = self.rows["train"]
        return train_loader(rows, self.hparams.batch_size, self.hparams.seed, self.trainer, collate_fn=collate,
                            drop_last=len(rows) >= self.hparams.batch_size)

    def val_dataloader(self):
        if "val" not in self.rows:
            return []
        return DataLoader(self.rows["val"], batch_size=self.hparams.eval_batch_size, collate_fn=collate)

    def test_dataloader(self) -> DataLoader:
        rows = self.rows.get("test", self.rows.get("val"))
        if rows is None:
            raise ValueError("RLPromptDataModule: no test_file (or val_file) configured")
        return DataLoader(rows, batch_size=self.hparams.eval_batch_size, collate_fn=collate)
