"""DataModules: BEIR corpora/queries/qrels, QA sets, crop pairs, RL prompt sets, RetRobust mixed contexts,
LSR set-ups, self-correction tasks."""

from datamodules.beir import BEIRDataModule
from datamodules.crops import CropPairsDataModule
from datamodules.lsr import LSRLanguageModelingDataModule, LSRQADataModule
from datamodules.qa import QADataModule
from datamodules.retrobust import RetRobustDataModule
from datamodules.rl_prompts import RLPromptDataModule
from datamodules.self_correction import SelfCorrectionDataModule

__all__ = ["BEIRDataModule", "CropPairsDataModule", "LSRLanguageModelingDataModule", "LSRQADataModule", "QADataModule",
           "RLPromptDataModule", "RetRobustDataModule", "SelfCorrectionDataModule"]
