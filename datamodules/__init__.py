"""DataModules: BEIR corpora/queries/qrels, QA sets, crop pairs, RL prompt sets."""

from datamodules.beir import BEIRDataModule

__all__ = ["BEIRDataModule"]
