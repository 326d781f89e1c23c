"""DataModules: BEIR corpora/queries/qrels, QA sets, crop pairs, RL prompt sets."""

from datamodules.beir import BEIRDataModule
from datamodules.crops import CropPairsDataModule
from datamodules.qa import QADataModule
from datamodules.rl_prompts import RLPromptDataModule

__all__ = ["BEIRDataModule", "CropPairsDataModule", "QADataModule", "RLPromptDataModule"]
