"""SearchR1: an LLM that learns when and what to search, trained with GRPO or PPO (Jin et al., 2025).

Optional, once before RL (``warm_start_questions`` > 0): a supervised warm start on search-protocol
demonstrations from training questions (rl.sft), for policies too small to follow the tags zero-shot.
One training step, for a batch of Q questions:
  1. rollout:    G samples per question with the search tool (rl.rollout): <search> stops generation,
                 top-k passages come back as <information>, up to B searches, then a final turn
  2. reward:     EM of the last <answer> of each response (rl.rewards, the evaluation metric itself)
  3. reference:  log-probs of the reference policy, the one RL starts from (frozen copy, or the LoRA
                 model with adapters off)
  4. advantage:  GRPO: group-normalised outcome reward; PPO: GAE over the policy's own tokens with the
                 value head (rl.advantages); KL to the reference in the reward if configured
  5. update:     ppo_epochs x mini-batches of the clipped policy loss (+ KL loss, - entropy bonus,
                 + value loss), information and prompt tokens masked out (rl.losses)
Validation/test: greedy rollouts on held-out questions -> EM, F1, searches per question.
"""

from __future__ import annotations

import copy
import random
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from generation.lm import DEFAULT_GENERATOR, load_causal_lm
from rl.advantages import gae, grpo_advantages, whiten
from rl.kl import kl_estimate
from rl.losses import aggregate, clipped_policy_loss, value_loss
from rl.prompts import render_prompt, resolve_template
from rl.rewards import combined_reward, em_reward, f1_reward
from rl.rollout import Rollouts, rollout, sequence_logprobs
from rl.search import SafeSearch, SearchEngine
from rl.sft import protocol_demonstrations, sft_loss


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class SearchR1(L.LightningModule):
    """Search-R1 with GRPO or PPO.

    Args:
        model_name_or_path: the policy (a local folder, a hub name, or ``smollm2-135m-instruct``).
        lora: peft LoRA settings (``{"r", "alpha", "dropout", "target_modules"}``); then the reference
            policy is the same model with its adapters disabled (no second copy in memory), unless a warm
            start runs (then it is a frozen copy of the warm-started policy).
        load_in_4bit: QLoRA base (bitsandbytes nf4); needs ``lora``.
        search: the search engine (``rl.search.BM25Search``, ``DenseSearch``, ``HTTPSearch``, ...);
            None trains without a tool (plain single-turn generation).
        search_k / search_timeout: passages per search; seconds before a search counts as failed.
        search_max_chars: truncate each inserted passage to this many characters (short contexts on CPU).
        max_searches: the search budget B; a final turn without search follows.
        algorithm: ``grpo`` or ``ppo``.
        group_size: G rollouts per question (GRPO needs G > 1; PPO usually uses 1).
        max_turn_tokens / max_response_tokens: tokens per generation turn; generated + inserted tokens
            per rollout.
        temperature / top_p: sampling in training (evaluation is greedy).
        reward / format_reward_weight: ``em`` or ``f1``, plus an optional format term.
        normalize_std: GRPO's division by the group's std (False: Dr. GRPO).
        gamma / lam / whiten_advantages: PPO's GAE and advantage normalisation.
        clip_low / clip_high: the ratio clip range [1 - clip_low, 1 + clip_high] (clip_high None: symmetric).
        loss_aggregation: see ``rl.losses.aggregate``.
        kl_coef / kl_estimator / kl_in_reward: beta, k1/k2/k3, and whether the KL penalty is subtracted
            from the reward (PPO-style) or added to the loss (GRPO-style). 0 disables the reference.
        entropy_coef: entropy bonus (subtracted from the loss).
        value_coef / value_clip: PPO's value loss weight and clip.
        ppo_epochs / mini_batch_size: passes over each rollout batch and rollouts per optimizer step
            (None: all of them, one step per pass).
        micro_batch_size: rollouts per forward pass (gradient accumulation inside a mini-batch).
        max_grad_norm: gradient clipping (manual optimisation: Trainer.gradient_clip_val is not used).
        optimizer: optimizer factory for the trainable parameters (LoRA adapters or all weights, and the value head).
        template / chat: the instruction template, by name (``search_r1``: the paper's; ``search_r1_one_shot``:
            the same plus one worked trajectory, for small policies) or literal (with ``{question}``), and
            whether to wrap it in the chat template.
        log_rollouts: sampled rollouts written to TensorBoard as text every ``log_rollouts_every`` steps.
        generation_kwargs: extra ``model.generate`` arguments (Python use only, e.g. a logits processor).
        warm_start_questions / warm_start_epochs / warm_start_batch_size: supervised warm start before RL on
            demonstrations built from the first N training questions (those whose search returns the answer;
            ``rl.sft``), with the module's optimizer; 0 = none (the paper). Done once: a resumed run skips it.
            The warm-started policy becomes the KL reference.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_GENERATOR, lora: dict | None = None,
                 load_in_4bit: bool = False, search: SearchEngine | None = None, search_k: int = 3,
                 search_timeout: float | None = 60.0, search_max_chars: int | None = None, max_searches: int = 2, algorithm: str = "grpo",
                 group_size: int = 4, max_turn_tokens: int = 128, max_response_tokens: int = 512,
                 temperature: float = 1.0, top_p: float = 1.0, reward: str = "em", format_reward_weight: float = 0.0,
                 normalize_std: bool = True, gamma: float = 1.0, lam: float = 1.0, whiten_advantages: bool = True,
                 clip_low: float = 0.2, clip_high: float | None = None, loss_aggregation: str = "token-mean",
                 kl_coef: float = 0.001, kl_estimator: str = "k3", kl_in_reward: bool = False,
                 entropy_coef: float = 0.0, value_coef: float = 0.5, value_clip: float | None = 0.2,
                 ppo_epochs: int = 1, mini_batch_size: int | None = None, micro_batch_size: int = 8,
                 max_grad_norm: float | None = 1.0, optimizer: OptimizerCallable = adamw,
                 template: str = "search_r1", chat: bool = True, log_rollouts: int = 2,
                 log_rollouts_every: int = 10, generation_kwargs: dict | None = None, warm_start_questions: int = 0,
                 warm_start_epochs: int = 1, warm_start_batch_size: int = 8):
        super().__init__()
        resolve_template(template)  # fail at construction on a bad name, not at the first step
        self.save_hyperparameters(ignore=["search", "optimizer", "generation_kwargs"])
        if algorithm not in ("grpo", "ppo"):
            raise ValueError(f"unknown algorithm {algorithm!r}; expected 'grpo' or 'ppo'")
        if algorithm == "grpo" and group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (advantages are relative to the group)")
        if load_in_4bit and lora is None:
            raise ValueError("load_in_4bit needs lora: a 4-bit base cannot be trained directly")
        self.automatic_optimization = False  # several PPO epochs / mini-batches per rollout batch
        self.optimizer_factory = optimizer
        self.generation_kwargs = generation_kwargs
        self.search = SafeSearch(search, search_k, search_timeout, search_max_chars) if search is not None else None
        # Built on CPU (Lightning moves it); a 4-bit base is placed by bitsandbytes on the GPU.
        self.policy, self.tokenizer = load_causal_lm(model_name_or_path, load_in_4bit=load_in_4bit, lora=lora,
                                                     device=None if load_in_4bit else "cpu")
        self.policy.config.use_cache = True
        # Reference policy = the policy RL starts from; none when there is no KL term. With LoRA and no warm
        # start that is the model with its adapters disabled; otherwise a frozen copy, which the warm start
        # overwrites with its result (a KL pulling back to the pre-warm-start model would undo it).
        self.reference = None
        if kl_coef > 0 and (lora is None or warm_start_questions):
            self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        # PPO's critic: a linear value head on the policy's last hidden states (shared backbone).
        self.value_head = nn.Linear(self.policy.config.hidden_size, 1) if algorithm == "ppo" else None
        if warm_start_questions and search is None:
            raise ValueError("warm_start_questions needs a search engine (the demonstrations search)")
        # In the state dict, so a resumed run knows the warm start is done.
        self.register_buffer("warm_started", torch.tensor(False))

    # -- library calls, one per step ------------------------------------------------------------------
    def prompts(self, questions: list[str], repeat: int = 1) -> list[str]:
        hp = self.hparams
        return [render_prompt(self.tokenizer, q, hp.template, hp.chat) for q in questions for _ in range(repeat)]

    def sample(self, prompts: list[str], greedy: bool = False) -> Rollouts:
        hp = self.hparams
        return rollout(self.policy, self.tokenizer, prompts, self.search, hp.max_searches, hp.max_turn_tokens,
                       hp.max_response_tokens, hp.temperature, hp.top_p, do_sample=not greedy,
                       compute_logprobs=not greedy, logprob_micro_batch_size=hp.micro_batch_size,
                       generation_kwargs=self.generation_kwargs)

    @torch.no_grad()
    def reference_logprobs(self, r: Rollouts) -> torch.Tensor | None:
        """(N, L) log pi_ref, masked like the policy's; None without a KL term."""
        hp = self.hparams
        if hp.kl_coef <= 0:
            return None
        model = self.reference if self.reference is not None else self.policy
        adapters_off = self.policy.disable_adapter() if self.reference is None else nullcontext()
        was_training = model.training
        model.eval()
        with adapters_off:
            ref = sequence_logprobs(model, r.input_ids.to(self.device), r.attention_mask.to(self.device),
                                    hp.temperature, hp.micro_batch_size, start=min(r.prompt_lengths))
        model.train(was_training)
        return ref * r.loss_mask.to(ref.device)

    @torch.no_grad()
    def values(self, r: Rollouts) -> torch.Tensor:
        """(N, L) V(x_<t) aligned with token t (the state in which the policy chose token t)."""
        was_training = self.policy.training
        self.policy.eval()
        _, hidden = sequence_logprobs(self.policy, r.input_ids.to(self.device), r.attention_mask.to(self.device),
                                      self.hparams.temperature, self.hparams.micro_batch_size, with_hidden=True,
                                      start=min(r.prompt_lengths))
        self.policy.train(was_training)
        return self._value(hidden)

    def _value(self, hidden: torch.Tensor) -> torch.Tensor:
        v = self.value_head(hidden.float()).squeeze(-1)[:, :-1]
        return torch.nn.functional.pad(v, (1, 0))

    def advantages(self, r: Rollouts, rewards: torch.Tensor, ref_logprobs: torch.Tensor | None):
        """GRPO: (N,) per-rollout advantages. PPO: (N, L) GAE advantages, returns and old values.
        With ``kl_in_reward`` the reward is r - beta * KL (summed over a rollout's tokens for GRPO,
        per token for PPO)."""
        hp = self.hparams
        mask = r.loss_mask.to(self.device)
        kl = None
        if ref_logprobs is not None and hp.kl_in_reward:
            kl = kl_estimate(r.old_logprobs.to(self.device), ref_logprobs, hp.kl_estimator) * mask
        if hp.algorithm == "grpo":
            seq_rewards = rewards - hp.kl_coef * kl.sum(1) if kl is not None else rewards
            return grpo_advantages(seq_rewards, hp.group_size, hp.normalize_std), None, None
        token_rewards = torch.zeros(mask.shape, device=self.device)
        last = (mask * torch.arange(mask.shape[1], device=self.device)).argmax(dim=1)  # last generated token
        token_rewards[torch.arange(len(r)), last] = rewards
        if kl is not None:
            token_rewards = token_rewards - hp.kl_coef * kl
        old_values = self.values(r)
        adv, returns = gae(token_rewards, old_values, mask, hp.gamma, hp.lam)
        if hp.whiten_advantages:
            adv = whiten(adv, mask)
        return adv, returns, old_values

    def loss(self, r: Rollouts, advantages: torch.Tensor, returns, old_values, ref_logprobs):
        """Clipped policy loss (+ beta * KL, - entropy bonus, + value loss) on one micro-batch."""
        hp = self.hparams
        ids, am, mask = (r.input_ids.to(self.device), r.attention_mask.to(self.device), r.loss_mask.to(self.device))
        out = sequence_logprobs(self.policy, ids, am, hp.temperature, micro_batch_size=len(r), with_entropy=True,
                                with_hidden=hp.algorithm == "ppo", start=min(r.prompt_lengths))
        logprobs, entropy = out[0], out[1]
        loss, stats = clipped_policy_loss(logprobs, r.old_logprobs.to(self.device), advantages, mask, hp.clip_low,
                                          hp.clip_high, hp.loss_aggregation)
        stats["policy_loss"] = loss.detach()
        stats["entropy"] = aggregate(entropy.detach(), mask, "token-mean")
        if hp.entropy_coef:
            loss = loss - hp.entropy_coef * aggregate(entropy, mask, hp.loss_aggregation)
        if ref_logprobs is not None:
            kl = kl_estimate(logprobs, ref_logprobs, hp.kl_estimator)
            stats["kl"] = aggregate(kl.detach(), mask, "token-mean")
            if not hp.kl_in_reward:
                loss = loss + hp.kl_coef * aggregate(kl, mask, hp.loss_aggregation)
        if hp.algorithm == "ppo":
            v = self._value(out[2])
            vloss = value_loss(v, old_values, returns, mask, hp.value_clip, hp.loss_aggregation)
            stats["value_loss"] = vloss.detach()
            loss = loss + hp.value_coef * vloss
        return loss, stats

    def update(self, r: Rollouts, advantages, returns, old_values, ref_logprobs) -> dict[str, float]:
        """ppo_epochs passes; each pass shuffles the rollouts into mini-batches, one optimizer step per
        mini-batch, micro-batches accumulated (weighted by their share of the mini-batch)."""
        hp = self.hparams
        opt = self.optimizers()
        n = len(r)
        mb = hp.mini_batch_size or n
        sums: dict[str, float] = {}
        count = 0
        for _ in range(hp.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, mb):
                idx = order[start:start + mb]
                opt.zero_grad()
                for ms in range(0, len(idx), hp.micro_batch_size):
                    sub = idx[ms:ms + hp.micro_batch_size]
                    dev = sub.to(self.device)
                    loss, stats = self.loss(r.select(sub), advantages[dev],
                                            None if returns is None else returns[dev],
                                            None if old_values is None else old_values[dev],
                                            None if ref_logprobs is None else ref_logprobs[dev])
                    self.manual_backward(loss * len(sub) / len(idx))
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                if hp.max_grad_norm:
                    self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
        return {k: v / count for k, v in sums.items()}

    # -- training -------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        hp = self.hparams
        if hp.warm_start_questions and not bool(self.warm_started):
            self.warm_start(self.trainer.datamodule.rows["train"][:hp.warm_start_questions])

    def warm_start(self, rows: list[dict]) -> None:
        """0. supervised warm start on protocol demonstrations (rl.sft), before the first RL step."""
        hp = self.hparams
        demos = protocol_demonstrations(self.tokenizer, self.prompts([r["question"] for r in rows]),
                                        [r["question"] for r in rows], [r["answers"] for r in rows], self.search)
        opt = self.optimizers()
        self.policy.train()
        step = 0
        for _ in range(hp.warm_start_epochs):
            order = torch.randperm(len(demos))
            for s in range(0, len(demos), hp.warm_start_batch_size):
                opt.zero_grad()
                loss = sft_loss(self.policy, demos.select(order[s:s + hp.warm_start_batch_size]).to(self.device),
                                hp.micro_batch_size)
                self.manual_backward(loss)
                if hp.max_grad_norm:
                    self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                if self.logger is not None:
                    self.logger.log_metrics({"warm_start/loss": loss.item(), "warm_start/demonstrations": len(demos)},
                                            step=step)
                step += 1
        opt.zero_grad()
        if self.reference is not None:  # RL's reference is the warm-started policy
            self.reference.load_state_dict(self.policy.state_dict())
        self.warm_started.fill_(True)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        answers = [a for a in batch["answers"] for _ in range(hp.group_size)]
        r = self.sample(self.prompts(batch["question"], hp.group_size))                        # 1. rollout
        rewards = torch.tensor(combined_reward(r.responses, answers, hp.reward, hp.format_reward_weight),
                               device=self.device)                                              # 2. reward
        ref_logprobs = self.reference_logprobs(r)                                               # 3. reference
        advantages, returns, old_values = self.advantages(r, rewards, ref_logprobs)             # 4. advantage
        stats = self.update(r, advantages, returns, old_values, ref_logprobs)                   # 5. clipped loss, update
        em = em_reward(r.responses, answers)
        self.log_dict({"train/reward": rewards.mean(), "train/em": sum(em) / len(em),
                       "train/searches": r.num_searches.float().mean(),
                       "train/search_errors": r.search_errors.float().sum(),
                       "train/response_length": r.response_lengths.float().mean(),
                       **{f"train/{k}": v for k, v in stats.items()}},
                      prog_bar=False, batch_size=len(r))
        self.log("train/reward_mean", rewards.mean(), prog_bar=True, batch_size=len(r), logger=False)
        if hp.log_rollouts and batch_idx % max(hp.log_rollouts_every, 1) == 0:
            self.log_text("train/rollouts", r, rewards.tolist(), answers)

    def configure_optimizers(self):
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])

    # -- evaluation -----------------------------------------------------------------------------------
    def _evaluate(self, batch: dict, prefix: str) -> None:
        r = self.sample(self.prompts(batch["question"]), greedy=True)
        n = len(r)
        self.log_dict({f"{prefix}/em": sum(em_reward(r.responses, batch["answers"])) / n,
                       f"{prefix}/f1": sum(f1_reward(r.responses, batch["answers"])) / n,
                       f"{prefix}/searches": r.num_searches.float().mean(),
                       f"{prefix}/response_length": r.response_lengths.float().mean()},
                      batch_size=n, add_dataloader_idx=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def log_text(self, tag: str, r: Rollouts, rewards: list[float], answers: list) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_text"):
            return
        rows = []
        for i in range(min(self.hparams.log_rollouts, len(r))):
            prompt = self.tokenizer.decode(r.input_ids[i, :r.prompt_lengths[i]], skip_special_tokens=True)
            rows.append(f"**reward {rewards[i]:.2f}**, searches {int(r.num_searches[i])}, gold {answers[i]}\n\n"
                        f"    {prompt[-300:]!r}\n\n    {r.responses[i]!r}")
        experiment.add_text(tag, "\n\n---\n\n".join(rows), self.global_step)

    # -- checkpoints: the RNG state too, so a resumed run samples what an uninterrupted one would ------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types only: Lightning loads checkpoints with torch.load(weights_only=True)
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
