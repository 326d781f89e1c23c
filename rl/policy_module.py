"""PolicyGradientModule: the Lightning side of every RL method (SearchR1, SCoRe): manual optimisation
(several optimizer steps per rollout batch), the calls into the Lightning-free update loop (rl.update)
and the supervised loss (generation.logprobs.masked_nll), and the RNG state in checkpoints so that a
resumed run samples exactly what an uninterrupted one would.

A subclass builds its models in ``configure_model`` (idempotent: FSDP calls it to build shard by shard)
and writes its ``training_step`` as numbered calls: rollout, reward, reference, advantage, ``self.rl_update``.
"""

from __future__ import annotations

import lightning as L
import torch

from training.models import load_causal_lm
from generation.logprobs import masked_nll
from generation.tokens import TokenBatch
from training.rng_state import load_rng_state, save_rng_state
from rl.rollout import Rollouts
from rl.update import LossConfig, Schedule, update


class PolicyGradientModule(L.LightningModule):
    def __init__(self, max_grad_norm: float | None = 1.0):
        super().__init__()
        self.automatic_optimization = False  # several epochs / mini-batches per rollout batch
        self.max_grad_norm = max_grad_norm

    def load_policy(self):
        """The policy named by the hyperparameters (``model_name_or_path``, ``dtype``, ``load_in_4bit``, ``lora``,
        ``precision``: rollouts, old, new and reference log-probs all run in it),
        with the KV cache on for rollouts; called from a subclass's ``configure_model``. Built on CPU (Lightning
        moves it); a 4-bit base is placed by bitsandbytes."""
        hp = self.hparams
        policy, _ = load_causal_lm(hp.model_name_or_path, dtype=hp.dtype, load_in_4bit=hp.load_in_4bit, lora=hp.lora,
                                   device=None if hp.load_in_4bit else "cpu", precision=hp.get("precision"))
        policy.config.use_cache = True
        return policy

    def configure_optimizers(self):
        """``self.optimizer_factory`` (injected by the subclass, from the config) over the trainable parameters:
        the LoRA adapters or all weights, and the value head if any."""
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])

    def _step(self) -> None:
        opt = self.optimizers()
        if self.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad()

    def rl_update(self, policy, r: Rollouts, advantages: torch.Tensor, cfg: LossConfig, schedule: Schedule,
                  **kwargs) -> dict[str, float]:
        """rl.update with Lightning's backward (precision, strategy) and one optimizer step per mini-batch."""
        self.optimizers().zero_grad()
        return update(policy, r, advantages, cfg, schedule, self.manual_backward, self._step, **kwargs)

    def supervised_step(self, policy, batch: TokenBatch, micro_batch_size: int = 8) -> float:
        """One optimizer step on the masked NLL of ``batch``."""
        self.optimizers().zero_grad()
        loss = masked_nll(policy, batch.to(self.device), micro_batch_size, across_ranks=True)
        self.manual_backward(loss)
        self._step()
        return loss.item()

    # -- checkpoints: the RNG state too (training.rng_state) -------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_rng_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_rng_state(checkpoint)
