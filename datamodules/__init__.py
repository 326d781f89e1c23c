"""DataModules: BEIR corpora/queries/qrels, QA sets, crop pairs, RL prompt sets."""

from datamodules.beir import BEIRDataModule

__all__ = ["BEIRDataModule"]

from datamodules.crops import CropPairsDataModule  # noqa: E402

__all__ += ["CropPairsDataModule"]

from datamodules.qa import QADataModule  # noqa: E402

__all__ += ["QADataModule"]
