"""PolicyGradientModule: the Lightning side of every RL method (SearchR1, SCoRe): the policy loaded from the
``lm`` settings, the one ``sample()`` (rollouts in the method's environment with the ``sampling`` settings),
manual optimisation (several optimizer steps per rollout batch, ``updates``), the calls into the
Lightning-free update loop (rl.update, with the ``loss`` settings) and the supervised loss
(generation.logprobs.masked_nll), samples written to TensorBoard (``log_samples``), and the RNG state in
checkpoints so that a resumed run samples exactly what an uninterrupted one would.

A subclass sets ``self.env`` (an attribute or a property), builds its models in ``configure_model``
(idempotent: FSDP calls it to build shard by shard; ``self.load_policy()`` gives the policy) and writes its
``training_step`` as numbered calls: ``self.sample``, reward, reference, advantage, ``self.rl_update``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from generation.logprobs import masked_nll
from generation.tokens import TokenBatch
from rl.advantages import nonzero_group_share
from rl.rollout import Rollouts, rollout
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from rl.update import update
from training.models import load_causal_lm, load_tokenizer
from training.records import log_texts
from training.rng_state import load_rng_state, save_rng_state
from training.settings import LM
from training.sharding import full_parameters


class PolicyGradientModule(L.LightningModule):
    def __init__(self, lm: LM, sampling: Sampling, loss: PolicyLoss, updates: Updates, optimizer,
                 log_samples: SampleLog):
        super().__init__()
        self.automatic_optimization = False  # several epochs / mini-batches per rollout batch
        self.lm, self.sampling, self.loss, self.updates, self.log_samples = lm, sampling, loss, updates, log_samples
        self.optimizer_factory = optimizer  # a callable; under LightningCLI self.hparams would hold a dict
        self.tokenizer = load_tokenizer(lm.name_or_path)
        self.policy = self.reference = None

    def load_policy(self):
        """The policy of ``self.lm`` (its ``precision``: rollouts, old, new and reference log-probs all run in it),
        with the KV cache on for rollouts; called from a subclass's ``configure_model``. Built on CPU (Lightning
        moves it); a 4-bit base is placed by bitsandbytes."""
        lm = self.lm
        policy, _ = load_causal_lm(lm.name_or_path, device=None if lm.load_in_4bit else "cpu", **lm.load_kwargs())
        if lm.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = True
        return policy

    # -- rollouts -------------------------------------------------------------------------------------------
    def response_budget(self) -> int:
        """Tokens of a whole response: ``sampling.max_response_tokens``, or every turn of the environment at
        ``max_turn_tokens`` plus 512 for the inserted text."""
        s = self.sampling
        return s.max_response_tokens or self.env.max_turns * s.max_turn_tokens + 512

    def sample(self, prompts: Sequence[str], greedy: bool = False) -> Rollouts:
        """Rollouts of ``prompts`` in ``self.env``: sampled with their old log-probs, or greedy (evaluation)."""
        s = self.sampling
        # FSDP2: whole parameters on each rank for the rollout, so ranks need not generate in lockstep
        with full_parameters(self.policy):
            return rollout(self.policy, self.tokenizer, list(prompts), self.env,
                           max_turn_tokens=(s.eval_max_turn_tokens or s.max_turn_tokens) if greedy else s.max_turn_tokens,
                           max_response_tokens=self.response_budget(), temperature=s.temperature, top_p=s.top_p,
                           do_sample=not greedy, compute_logprobs=not greedy,
                           logprob_micro_batch_size=self.updates.micro_batch_size,
                           generation_kwargs=s.generation_kwargs)

    def log_sample_texts(self, tag: str, texts: Sequence[str]) -> None:
        """The first ``log_samples.count`` of ``texts`` (Markdown) in TensorBoard under ``tag``, at this step."""
        log_texts(self.logger, tag, list(texts)[:self.log_samples.count], self.global_step)

    # -- updates --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """``self.optimizer_factory`` (from the config) over the trainable parameters: the LoRA adapters or all
        weights, and the value head if any."""
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])

    def _step(self) -> None:
        opt = self.optimizers()
        if self.updates.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.updates.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad()

    def rl_update(self, r: Rollouts, advantages: torch.Tensor, **kwargs) -> dict[str, float]:
        """rl.update of the policy with this module's ``loss`` and ``updates`` at the sampling temperature, Lightning's
        backward (precision, strategy) and one optimizer step per mini-batch."""
        self.optimizers().zero_grad()
        return update(self.policy, r, advantages, self.loss, self.updates, self.manual_backward, self._step,
                      temperature=self.sampling.temperature, **kwargs)

    def log_advantage_share(self, advantages: torch.Tensor, group_size: int) -> None:
        """``train/nonzero_advantage_share``: the share of this step's prompt groups whose advantages are not all
        zero (rl.advantages.nonzero_group_share), from (N,) advantages; from (N, T) per-turn advantages also
        ``train/nonzero_advantage_share_t{t}`` per turn, the overall share counting a group when any turn is nonzero.
        Pass the advantages of the task reward: a KL penalty in the reward makes every group nonzero."""
        a = advantages if advantages.ndim == 2 else advantages[:, None]
        logs = {"train/nonzero_advantage_share": nonzero_group_share(a.abs().amax(dim=1), group_size)}
        if advantages.ndim == 2:
            logs.update({f"train/nonzero_advantage_share_t{t + 1}": s
                         for t, s in enumerate(nonzero_group_share(advantages, group_size))})
        self.log_dict(logs, batch_size=len(a))

    def reference_logprobs(self, r: Rollouts) -> torch.Tensor | None:
        """log pi_ref of the rollouts' tokens at the sampling temperature (None without a KL term)."""
        return self.reference.logprobs(self.policy, r.tokens, self.sampling.temperature,
                                       self.updates.micro_batch_size, min(r.prompt_lengths), r.prefix)

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
