"""SearchR1: an LLM that learns when and what to search, trained with GRPO or PPO (Jin et al., 2025).

0. (optional, once) supervised warm start on search-protocol demonstrations (rl.sft), for small policies
One training step, for a batch of Q questions:
  1. rollout:    G samples per question in the environment (rl.rollout; rl.envs.SearchEnv over a search engine)
  2. reward:     the ``reward`` callable on the responses alone: EM/F1 of the last <answer> (+ format) by default
                 (tasks.qa_rewards: the evaluation metric)
  3. reference:  log-probs of the reference policy (rl.policy: frozen copy, or adapters off)
  4. advantage:  the registered estimator ``algorithm`` names (rl.advantages.ADVANTAGES): GRPO / RLOO /
                 REINFORCE+baseline per rollout, or GAE with the value head (PPO)
  5. update:     epochs x mini-batches x micro-batches of the clipped loss, information tokens masked (rl.update)
Validation/test: greedy rollouts on held-out questions -> EM, F1, searches, failed searches.
"""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from rl.advantages import get_advantage
from rl.envs import Environment, Reward, SingleTurn
from rl.policy import ReferencePolicy, ValueHead
from rl.policy_module import PolicyGradientModule
from rl.prompts import render_prompt, resolve_template
from rl.rollout import Rollouts
from rl.search import failure_summary
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from rl.sft import WarmStart, protocol_demonstrations
from rl.update import advantages, old_values
from tasks.qa_rewards import ExactMatch, em_reward, f1_reward
from training.records import code_block
from training.settings import LM, save_settings
from training.sharding import shard


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class SearchR1(PolicyGradientModule):
    """Args:
        lm: the policy (training.settings.LM), built in ``configure_model``.
        env: the environment of a rollout (rl.envs): ``rl.envs.SearchEnv`` with its search engine, passages per
            search, timeout and search budget B; None: one turn without a tool. Any ``rl.envs.Environment``.
        reward: ``reward(responses, examples) -> list[float]`` (rl.envs.Reward): ``tasks.qa_rewards.ExactMatch``
            (default), ``F1`` (both with ``format_weight``), or any callable / class_path.
        algorithm: a registered advantage estimator (rl.advantages.ADVANTAGES): ``grpo``, ``rloo``, ``reinforce``
            (one advantage per rollout) or ``ppo`` (= ``gae``: GAE with a value head); advantage_options its keyword
            arguments (``normalize_std`` for GRPO, False: Dr. GRPO; ``gamma``, ``lam``, ``whiten_advantages`` for GAE).
        sampling: group_size G, temperature, top_p, max_turn_tokens, max_response_tokens (rl.settings.Sampling).
        loss: clip range, aggregation, kl_coef beta (0 disables the reference), KL estimator and place (a loss term by
            default, the reward for PPO-style; None: the one whose gradient is the paper's beta KL(pi || pi_ref) there:
            k2 as a loss, k1 in the reward; ``k3`` as a loss reproduces the paper's verl runs, docs/rl_kl.md),
            entropy and value terms (rl.settings.PolicyLoss).
        updates: epochs over each rollout batch, mini- and micro-batch sizes, gradient clipping (rl.settings.Updates).
        template / chat: the instruction template (name or literal with {question}) and chat wrapping.
        warm_start: supervised warm start on the first N training questions (rl.sft.WarmStart; 0: none); the
            warm-started policy becomes the KL reference. Done once per run.
        log_samples: rollouts written to TensorBoard's text tab (rl.settings.SampleLog).
    """

    def __init__(self, lm: LM = LM(), env: Environment | None = None, reward: Reward = lazy_instance(ExactMatch),
                 algorithm: str = "grpo", advantage_options: dict | None = None,
                 sampling: Sampling = Sampling(max_turn_tokens=128, max_response_tokens=512),
                 loss: PolicyLoss = PolicyLoss(kl_coef=0.001), updates: Updates = Updates(),
                 optimizer: OptimizerCallable = adamw, template: str = "search_r1", chat: bool = True,
                 warm_start: WarmStart = WarmStart(), log_samples: SampleLog = SampleLog()):
        super().__init__(lm, sampling, loss, updates, optimizer, log_samples)
        resolve_template(template)  # fail at construction on a bad name, not at the first step
        save_settings(self, ignore=["env", "reward", "optimizer"])
        self.estimator, self.advantage_options = get_advantage(algorithm), dict(advantage_options or {})
        self.estimator.check_options(self.advantage_options)
        if sampling.group_size < self.estimator.min_group_size:
            raise ValueError(f"{algorithm} needs sampling.group_size >= {self.estimator.min_group_size} "
                             "(advantages are relative to the group)")
        self.env = env if env is not None else SingleTurn()
        self.search = getattr(self.env, "search", None)  # the warm start's demonstrations search with it
        if warm_start.questions and self.search is None:
            raise ValueError("warm_start.questions needs an environment with a search engine (rl.envs.SearchEnv): "
                             "the demonstrations search")
        self.reward = reward
        self.template, self.chat, self.warm_start_settings = template, chat, warm_start
        self.value_head = None
        self.register_buffer("warm_started", torch.tensor(False))  # in the state dict: a resumed run skips it
        self.search_totals = torch.zeros(2, dtype=torch.long)  # searches, failed searches: this process, this run

    def configure_model(self) -> None:
        """The policy in the dtype asked for (a 4-bit base is placed by bitsandbytes), the reference policy
        and the value head; idempotent."""
        if self.policy is not None:
            return
        self.policy = self.load_policy()
        self.reference = ReferencePolicy.for_policy(self.policy, self.loss.uses_kl,
                                                    warm_start=bool(self.warm_start_settings.questions))
        if self.estimator.value_head:
            self.value_head = ValueHead(self.policy.config.hidden_size)
        # FSDP2 (ModelParallelStrategy): policy and reference block by block; nothing on one process or DDP
        shard(self, self.policy, self.reference.model, self.value_head)

    def prompts(self, questions: list[str], repeat: int = 1) -> list[str]:
        return [render_prompt(self.tokenizer, q, self.template, self.chat) for q in questions for _ in range(repeat)]

    # -- training ---------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        ws = self.warm_start_settings
        if ws.questions and not bool(self.warm_started):
            self.warm_start(self.trainer.datamodule.rows["train"][:ws.questions])

    def warm_start(self, rows: list[dict]) -> None:
        """0. supervised warm start (masked NLL of the policy's own tokens); then the reference follows."""
        ws = self.warm_start_settings
        questions = [r["question"] for r in rows]
        demos = protocol_demonstrations(self.tokenizer, self.prompts(questions), questions,
                                        [r["answers"] for r in rows], self.search)
        self.policy.train()
        for epoch in range(ws.epochs):
            order = torch.randperm(len(demos))
            for s in range(0, len(demos), ws.batch_size):
                loss = self.supervised_step(self.policy, demos.select(order[s:s + ws.batch_size]),
                                            self.updates.micro_batch_size)
                if self.logger is not None:
                    self.logger.log_metrics({"warm_start/loss": loss, "warm_start/demonstrations": len(demos)},
                                            step=epoch * len(demos) + s)
        self.reference.sync(self.policy)
        self.warm_started.fill_(True)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        G = self.sampling.group_size
        examples = [row for row in self.examples(batch) for _ in range(G)]
        r = self.sample(self.prompts(batch["question"], G))                                     # 1. rollout
        rewards = self.rewards(r, examples)                                                      # 2. reward
        ref = self.reference_logprobs(r)                                                         # 3. reference
        values = old_values(self.policy, self.value_head, r, self.sampling.temperature,
                            self.updates.micro_batch_size) if self.value_head is not None else None
        adv, returns = advantages(self.estimator.name, r, rewards, self.loss, group_size=G,      # 4. advantage
                                  ref_logprobs=ref, values=values, **self.advantage_options)
        stats = self.rl_update(r, adv, value_head=self.value_head, ref_logprobs=ref,            # 5. update
                               returns=returns, values=values)
        em = em_reward(r.responses, examples)
        self.log_dict({"train/reward": rewards.mean(), "train/em": sum(em) / len(em),
                       **self.search_metrics("train", r), "train/response_length": r.response_lengths.float().mean(),
                       **{f"train/{k}": v for k, v in stats.items()}}, batch_size=len(r))
        self.log("train/reward_mean", rewards.mean(), prog_bar=True, batch_size=len(r), logger=False)
        if self.log_samples.due(batch_idx):
            self.log_rollouts("train/rollouts", r, rewards.tolist(), [e["answers"] for e in examples])

    @staticmethod
    def examples(batch: dict) -> list[dict]:
        """The batch's rows as whole examples (every field the DataModule gave, for the reward)."""
        return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["question"]))]

    def rewards(self, r: Rollouts, examples: list[dict]) -> torch.Tensor:
        """(N,) outcome reward of the responses alone (a prompt's example answer is never the model's)."""
        return torch.tensor(self.reward(r.responses, examples), dtype=torch.float32)

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
        summary = failure_summary(searches, failed)
        if summary is not None:
            rank_zero_warn(summary)

    def log_rollouts(self, tag: str, r: Rollouts, rewards: list[float], answers: list) -> None:
        texts = []
        for i in range(min(self.log_samples.count, len(r))):
            prompt = self.tokenizer.decode(r.input_ids[i, :r.prompt_lengths[i]], skip_special_tokens=True)
            texts.append(f"**reward {rewards[i]:.2f}**, searches {int(r.num_searches[i])}, gold {answers[i]}\n\n"
                         f"{code_block(prompt[-300:])}\n\n{code_block(r.responses[i])}")
        self.log_sample_texts(tag, texts)
