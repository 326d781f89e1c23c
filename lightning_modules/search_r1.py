"""SearchR1: an LLM that learns when and what to search, trained with GRPO or PPO (Jin et al., 2025).

0. (optional, once) supervised warm start on search-protocol demonstrations (rl.sft), for small policies
One training step, for a batch of Q questions:
  1. rollout:    G samples per question in the search environment (rl.rollout, rl.envs.SearchEnv)
  2. reward:     EM/F1 of the last <answer> of each response (+ format) (tasks.qa_rewards: the evaluation metric)
  3. reference:  log-probs of the reference policy (rl.policy: frozen copy, or adapters off)
  4. advantage:  GRPO / RLOO / REINFORCE+baseline per rollout, or GAE with the value head (PPO) (rl.update)
  5. update:     epochs x mini-batches x micro-batches of the clipped loss, information tokens masked
Validation/test: greedy rollouts on held-out questions -> EM, F1, searches, failed searches.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from training.models import DEFAULT_GENERATOR, load_tokenizer
from rl.policy_module import PolicyGradientModule
from training.sharding import full_parameters, shard
from rl.envs import SearchEnv, SingleTurn
from rl.policy import ReferencePolicy, ValueHead
from rl.prompts import render_prompt, resolve_template
from tasks.qa_rewards import combined_reward, em_reward, f1_reward
from rl.rollout import Rollouts, rollout
from rl.search import SafeSearch, SearchEngine
from rl.sft import protocol_demonstrations
from rl.update import LossConfig, Schedule, advantages, old_values

ALGORITHMS = ("grpo", "rloo", "reinforce", "ppo")


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class SearchR1(PolicyGradientModule):
    """Args (the RL ones are those of ``rl.update.LossConfig`` / ``Schedule``):
        model_name_or_path / dtype / lora / load_in_4bit: the policy, built in ``configure_model`` in ``dtype``.
        search / search_k / search_timeout / search_max_chars: the engine (rl.search; None: no tool),
            passages per search, seconds before a search fails, characters per passage.
        max_searches: the search budget B; a final turn without search follows.
        algorithm: ``grpo``, ``rloo``, ``reinforce`` (one advantage per rollout) or ``ppo`` (GAE, value head).
        group_size: G rollouts per question. normalize_std: GRPO's std division (False: Dr. GRPO).
        max_turn_tokens / max_response_tokens / temperature / top_p: sampling (evaluation is greedy).
        reward / format_reward_weight: ``em`` or ``f1``, plus an optional format term.
        kl_coef: beta (0 disables the reference); ppo_epochs: passes over each rollout batch.
        kl_estimator / kl_in_reward: where the KL goes (a loss term by default, the reward for PPO-style) and its
            estimator; None: the one whose gradient is the paper's beta KL(pi || pi_ref) there (k2 as a loss, k1 in
            the reward). ``k3`` as a loss reproduces the paper's verl runs (low_var_kl: the reverse KL's
            gradient). docs/rl_kl.md.
        template / chat: the instruction template (name or literal with {question}) and chat wrapping.
        warm_start_questions / _epochs / _batch_size: supervised warm start on the first N training
            questions (0: none); the warm-started policy becomes the KL reference. Done once per run.
        precision: the LM's compute precision for rollouts, log-probs and updates (``auto``, ``fp32``, ``bf16``;
            None: ``$RAGKIT_PRECISION``): the encoders' rule, see training.precision.set_precision.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_GENERATOR, dtype: str = "float32", lora: dict | None = None,
                 load_in_4bit: bool = False, search: SearchEngine | None = None, search_k: int = 3,
                 search_timeout: float | None = 60.0, search_max_chars: int | None = None, max_searches: int = 2,
                 algorithm: str = "grpo", group_size: int = 4, max_turn_tokens: int = 128,
                 max_response_tokens: int = 512, temperature: float = 1.0, top_p: float = 1.0, reward: str = "em",
                 format_reward_weight: float = 0.0, normalize_std: bool = True, gamma: float = 1.0, lam: float = 1.0,
                 whiten_advantages: bool = True, clip_low: float = 0.2, clip_high: float | None = None,
                 loss_aggregation: str = "token-mean", kl_coef: float | list[float] = 0.001, kl_estimator: str | None = None,
                 kl_in_reward: bool = False, entropy_coef: float = 0.0, value_coef: float = 0.5,
                 value_clip: float | None = 0.2, ppo_epochs: int = 1, mini_batch_size: int | None = None,
                 micro_batch_size: int = 8, max_grad_norm: float | None = 1.0, optimizer: OptimizerCallable = adamw,
                 template: str = "search_r1", chat: bool = True, log_rollouts: int = 2, log_rollouts_every: int = 10,
                 generation_kwargs: dict | None = None, warm_start_questions: int = 0, warm_start_epochs: int = 1,
                 warm_start_batch_size: int = 8, precision: str | None = None):
        super().__init__(max_grad_norm)
        resolve_template(template)  # fail at construction on a bad name, not at the first step
        self.save_hyperparameters(ignore=["search", "optimizer", "generation_kwargs"])
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
        if algorithm in ("grpo", "rloo") and group_size < 2:
            raise ValueError(f"{algorithm} needs group_size >= 2 (advantages are relative to the group)")
        if load_in_4bit and lora is None:
            raise ValueError("load_in_4bit needs lora: a 4-bit base cannot be trained directly")
        if warm_start_questions and search is None:
            raise ValueError("warm_start_questions needs a search engine (the demonstrations search)")
        self.loss_config = LossConfig(clip_low, clip_high, loss_aggregation, max_response_tokens, kl_coef,
                                      kl_estimator, kl_in_reward, entropy_coef, value_coef, value_clip, temperature)
        self.schedule = Schedule(ppo_epochs, mini_batch_size, micro_batch_size)
        self.optimizer_factory, self.generation_kwargs = optimizer, generation_kwargs
        self.search = SafeSearch(search, search_k, search_timeout, search_max_chars) if search is not None else None
        self.env = SearchEnv(self.search, max_searches) if search is not None else SingleTurn()
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.policy = self.reference = self.value_head = None
        self.register_buffer("warm_started", torch.tensor(False))  # in the state dict: a resumed run skips it
        self.search_totals = torch.zeros(2, dtype=torch.long)  # searches, failed searches: this process, this run

    def configure_model(self) -> None:
        """The policy in the dtype asked for (a 4-bit base is placed by bitsandbytes), the reference policy
        and the value head; idempotent."""
        if self.policy is not None:
            return
        hp = self.hparams
        self.policy = self.load_policy()
        self.reference = ReferencePolicy.for_policy(self.policy, self.loss_config.uses_kl,
                                                    warm_start=bool(hp.warm_start_questions))
        if hp.algorithm == "ppo":
            self.value_head = ValueHead(self.policy.config.hidden_size)
        # FSDP2 (ModelParallelStrategy): policy and reference block by block; nothing on one process or DDP
        shard(self, self.policy, self.reference.model, self.value_head)

    def prompts(self, questions: list[str], repeat: int = 1) -> list[str]:
        hp = self.hparams
        return [render_prompt(self.tokenizer, q, hp.template, hp.chat) for q in questions for _ in range(repeat)]

    def sample(self, prompts: list[str], greedy: bool = False) -> Rollouts:
        hp = self.hparams
        # FSDP2: whole parameters on each rank for the rollout, so ranks need not generate in lockstep
        with full_parameters(self.policy):
            return rollout(self.policy, self.tokenizer, prompts, self.env, max_turn_tokens=hp.max_turn_tokens,
                           max_response_tokens=hp.max_response_tokens, temperature=hp.temperature, top_p=hp.top_p,
                           do_sample=not greedy, compute_logprobs=not greedy,
                           logprob_micro_batch_size=hp.micro_batch_size, generation_kwargs=self.generation_kwargs)

    # -- training ---------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        hp = self.hparams
        if hp.warm_start_questions and not bool(self.warm_started):
            self.warm_start(self.trainer.datamodule.rows["train"][:hp.warm_start_questions])

    def warm_start(self, rows: list[dict]) -> None:
        """0. supervised warm start (masked NLL of the policy's own tokens); then the reference follows."""
        hp = self.hparams
        questions = [r["question"] for r in rows]
        demos = protocol_demonstrations(self.tokenizer, self.prompts(questions), questions,
                                        [r["answers"] for r in rows], self.search)
        self.policy.train()
        for epoch in range(hp.warm_start_epochs):
            order = torch.randperm(len(demos))
            for s in range(0, len(demos), hp.warm_start_batch_size):
                loss = self.supervised_step(self.policy, demos.select(order[s:s + hp.warm_start_batch_size]),
                                            hp.micro_batch_size)
                if self.logger is not None:
                    self.logger.log_metrics({"warm_start/loss": loss, "warm_start/demonstrations": len(demos)},
                                            step=epoch * len(demos) + s)
        self.reference.sync(self.policy)
        self.warm_started.fill_(True)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp, cfg = self.hparams, self.loss_config
        examples = [row for row in self.examples(batch) for _ in range(hp.group_size)]
        r = self.sample(self.prompts(batch["question"], hp.group_size))                        # 1. rollout
        rewards = self.rewards(r, examples)                                                      # 2. reward
        start = min(r.prompt_lengths)
        ref = self.reference.logprobs(self.policy, r.tokens, cfg.temperature, hp.micro_batch_size, start)  # 3. ref.
        values = old_values(self.policy, self.value_head, r, cfg.temperature, hp.micro_batch_size) \
            if self.value_head is not None else None
        adv, returns = advantages("gae" if hp.algorithm == "ppo" else hp.algorithm, r, rewards, cfg,  # 4. advantage
                                  group_size=hp.group_size, ref_logprobs=ref, values=values,
                                  normalize_std=hp.normalize_std, gamma=hp.gamma, lam=hp.lam,
                                  whiten_advantages=hp.whiten_advantages)
        stats = self.rl_update(self.policy, r, adv, cfg, self.schedule, value_head=self.value_head,  # 5. update
                               ref_logprobs=ref, returns=returns, values=values)
        em = em_reward(r.responses, examples)
        self.log_dict({"train/reward": rewards.mean(), "train/em": sum(em) / len(em),
                       **self.search_metrics("train", r), "train/response_length": r.response_lengths.float().mean(),
                       **{f"train/{k}": v for k, v in stats.items()}}, batch_size=len(r))
        self.log("train/reward_mean", rewards.mean(), prog_bar=True, batch_size=len(r), logger=False)
        if hp.log_rollouts and batch_idx % max(hp.log_rollouts_every, 1) == 0:
            self.log_text("train/rollouts", r, rewards.tolist(), [e["answers"] for e in examples])

    @staticmethod
    def examples(batch: dict) -> list[dict]:
        """The batch's rows as whole examples (every field the DataModule gave, for the reward)."""
        return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["question"]))]

    def rewards(self, r: Rollouts, examples: list[dict]) -> torch.Tensor:
        """(N,) outcome reward of the responses alone (a prompt's example answer is never the model's)."""
        return torch.tensor(combined_reward(r.responses, examples, self.hparams.reward, self.hparams.format_reward_weight))

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict, prefix: str) -> None:
        r = self.sample(self.prompts(batch["question"]), greedy=True)
        examples = self.examples(batch)
        n = len(r)
        self.log_dict({f"{prefix}/em": sum(em_reward(r.responses, examples)) / n,
                       f"{prefix}/f1": sum(f1_reward(r.responses, examples)) / n, **self.search_metrics(prefix, r),
                       f"{prefix}/response_length": r.response_lengths.float().mean()},
                      batch_size=n, add_dataloader_idx=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def search_metrics(self, prefix: str, r: Rollouts) -> dict:
        """Searches and failed searches per rollout; a warning when every search of the batch failed."""
        searches, failed = int(r.num_searches.sum()), int(r.search_errors.sum())
        self.search_totals += torch.tensor([searches, failed])
        if searches and failed == searches:
            rank_zero_warn(f"SearchR1 ({prefix}): all {searches} searches of this batch failed "
                           f"({int(self.search_totals[1])} of {int(self.search_totals[0])} so far); is the engine up?")
        # per rollout, like searches, so the epoch mean over batches is a rate
        return {f"{prefix}/searches": r.num_searches.float().mean(),
                f"{prefix}/search_errors": r.search_errors.float().mean()}

    def on_fit_end(self) -> None:
        """The run's failed searches, every process's: a counter in the logger and one warning."""
        totals = self.search_totals.to(self.device)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        searches, failed = (int(v) for v in totals.tolist())
        if self.logger is not None:
            self.logger.log_metrics({"fit/searches": searches, "fit/failed_searches": failed}, step=self.global_step)
        if searches and failed == searches:
            rank_zero_warn(f"SearchR1: EVERY search of this run failed ({failed} of {searches}): the policy trained "
                           "on error messages, not on search results")
        elif failed:
            rank_zero_warn(f"SearchR1: {failed} of {searches} searches of this run failed "
                           f"({100 * failed / searches:.1f}%); those rollouts read an error message instead of passages (the console's search warnings "
                           "name the errors)")

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
