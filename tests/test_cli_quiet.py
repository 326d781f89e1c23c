"""The warnings training/quiet.py silences are the ones a real fit (or LoRA model) prints (a library rewording them would let them
through again, and a synthetic warning would not notice): a tiny manual-optimisation fit with step checkpoints
and torchdata's loader, as every RL run of train.py is."""

import warnings

import pytest
import torch
from torch import nn

from training.quiet import MANUAL_OPTIMISATION_CHECKPOINT, quiet_warnings

pytestmark = pytest.mark.usefixtures("one_thread")
NOISE = {"manual optimisation checkpoint": MANUAL_OPTIMISATION_CHECKPOINT, "torchdata set_vital": "'set_vital'",
         "Lightning LeafSpec": "isinstance(treespec, LeafSpec)"}


def fit_warnings(tmp_path, quiet: bool) -> list[str]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torchdata.stateful_dataloader import StatefulDataLoader

    class Manual(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.w = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.w(batch).sum())
            opt.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return StatefulDataLoader(torch.randn(4, 2), batch_size=2)

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # (train.py, imported by other tests, installed the filters process-wide)
        warnings.simplefilter("always")
        if quiet:
            quiet_warnings()
        L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1)]).fit(Manual())
        warnings.warn("a warning of the run itself")
    return [str(w.message) for w in seen]


def test_a_real_fit_prints_the_noise_and_quiet_warnings_removes_it_alone(tmp_path):
    loud = fit_warnings(tmp_path / "loud", quiet=False)
    for name, text in NOISE.items():
        assert any(text in m for m in loud), f"{name}: not printed by this fit any more; drop its filter"
    quiet = fit_warnings(tmp_path / "quiet", quiet=True)
    assert [m for m in quiet if any(text in m for text in NOISE.values())] == []
    assert "a warning of the run itself" in quiet


def test_a_lora_model_prints_peft_deprecation_and_quiet_warnings_removes_it(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def lora_warnings(quiet: bool) -> list[str]:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        with warnings.catch_warnings(record=True) as seen:
            warnings.resetwarnings()
            warnings.simplefilter("always")
            if quiet:
                quiet_warnings()
            get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        return [str(w.message) for w in seen]

    assert any("`is_gradient_checkpointing` is deprecated" in m for m in lora_warnings(quiet=False))
    assert not any("`is_gradient_checkpointing` is deprecated" in m for m in lora_warnings(quiet=True))
