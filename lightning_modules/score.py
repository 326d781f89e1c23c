"""SCoRe: training an LLM to correct itself with two-stage multi-turn RL (Kumar et al., 2024; docs/methods/score.md).
The objective (returns, KL coefficients and baselines per attempt) is rl.score; the rollout, reference and
update are the RL core's.

One training step, for a batch of P problems (G samples each):
  1. rollout:    attempt 1, the fixed instruction, attempt 2, all sampled by the current policy (self.sample in
                 ``env``: rl.self_correction.two_attempt_env by default); the single-turn ablation samples attempt 1
  2. rewards:    r(y1), r(y2) by ``reward``: the task's checker, the evaluation metric (rl.self_correction.task_reward)
  3. reference:  log pi_ref of every generated token (rl.policy: the LoRA base with adapters off, or a frozen copy)
  4. per attempt: the KL coefficients (Stage I: beta2 on attempt 1, beta1 on attempt 2; Stage II: beta1 on both)
                 and the returns with the shaped bonus (rl.score.turn_returns; KL-in-reward variant optional)
  5. advantage:  each attempt's return minus its RLOO baseline, on that attempt's tokens only (gamma = 0)
  6. update:     the policy-gradient loss + per-attempt KL (rl.update; one epoch, one mini-batch: REINFORCE)
Validation/test: greedy two-attempt evaluation (rl.self_correction.evaluate_two_attempts): Accuracy@t1/t2,
Delta, Delta_i->c, Delta_c->i, edit distance between the attempts.

Stages: ``stage: I``, then ``stage: II`` with ``init_from`` the Stage I checkpoint (its policy weights: a ``.ckpt``
file, or the folder an FSDP2 run saves; the KL reference stays the base model, pi_ref of both stages). ``stage: II``
without ``init_from`` is the "no Stage I" ablation, ``objective.alpha: 0`` the "no shaping" one, ``stage: single_turn``
RL on attempt 1 only. Resuming either stage with ``--ckpt_path`` restores weights, optimizer, RNG and step, and never
reads ``init_from`` (Stage I's checkpoint may be gone by then).

Checkpoint selection: by training reward, as the paper does: ``train/selection_reward`` is the accuracy of the
final attempt (attempt 2; attempt 1 for single-turn RL) on the training samples of EVERY rank (the same value on
each, so that ModelCheckpoint's choice is global under data parallelism), averaged over the last
``selection_window`` steps, steps before the first counted as 0 (``rl.score.selection_reward``); the configs'
ModelCheckpoint keeps the best by it (no dev split is used).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning.pytorch.cli import OptimizerCallable

from rl.envs import Environment, Reward, SingleTurn
from rl.kl import kl_estimate
from rl.policy import ReferencePolicy, load_policy_weights
from rl.policy_module import PolicyGradientModule
from rl.rollout import Rollouts
from rl.score import (Objective, attempt_logs, attempt_rewards, check_stage, num_attempts, pair_text, selection_reward,
                      token_values, turn_advantages, turn_kl_coefs, turn_kl_penalty, turn_means, turn_returns)
from rl.self_correction import (ProblemFormat, attempt_format, attempt_metrics, attempt_texts, evaluate_two_attempts,
                                reward_health, task_kind, task_reward, two_attempt_env)
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from training.distributed import sum_over_ranks
from training.settings import LM, save_settings
from training.sharding import full_parameters, shard


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-6, weight_decay=0.0)


class SCoRe(PolicyGradientModule):
    """Args:
        lm: the policy (training.settings.LM), built in ``configure_model``.
        stage: ``I``, ``II`` or ``single_turn`` (ablation: RL on attempt 1 only; evaluated on two attempts).
        init_from: a checkpoint (file or FSDP2 folder) whose policy weights start this run (Stage II from Stage I's
            best checkpoint); read when training starts, not when it resumes from its own checkpoint.
        task: gsm8k / math / math500 / humaneval / mbpp / arithmetic, for the reward and the instruction (None: the
            DataModule's ``task``). reward: a ``reward(responses, examples)`` (rl.envs.Reward: a function or a
            class_path) replacing the task's.
        env: the rollout's environment (rl.envs.Environment, class_path), for training and evaluation; None: the
            two-attempt environment of the task with ``instruction`` (None: the paper's, by task kind) as a user turn
            (one attempt for ``single_turn`` training).
        objective: alpha, beta1, beta2 and the per-attempt baseline (rl.score.Objective).
        sampling: G samples per problem (each attempt's baseline comes from the other samples), temperature, top_p,
            max_turn_tokens per attempt (eval_max_turn_tokens at evaluation, which is greedy), max_response_tokens
            (None: 2 turns + 512) (rl.settings.Sampling).
        loss: aggregation ``seq-mean-token-sum`` (default) is REINFORCE's sum_t grad log pi over a response, averaged
            over responses; the KL is then the sequence KL. kl_estimator / kl_in_reward: rl.kl's estimator, the KL as a
            penalty in each attempt's own return (default) or as a loss term; None: the one with the paper's gradient
            there (k1 in the reward, k2 as a loss); k3 as a loss is verl's low_var_kl (docs/rl_kl.md). kl_coef is set
            per stage from beta1 / beta2 (rl.settings.PolicyLoss).
        updates: epochs, mini- and micro-batches, clipping (1 epoch and one mini-batch: on-policy, ratio 1, the clip
            never acts: plain REINFORCE) (rl.settings.Updates).
        chat: the problem and the instruction as chat turns (a DataModule's problem_format takes precedence).
        selection_window: steps averaged in ``train/selection_reward`` (checkpoint selection).
        log_samples: sampled (attempt 1, attempt 2) pairs written to TensorBoard (rl.settings.SampleLog).
    """

    def __init__(self, lm: LM = LM(), stage: str = "I", init_from: str | None = None, task: str | None = None,
                 reward: Reward | None = None, env: Environment | None = None, instruction: str | None = None,
                 objective: Objective = Objective(), sampling: Sampling = Sampling(),
                 loss: PolicyLoss = PolicyLoss(aggregation="seq-mean-token-sum", kl_in_reward=True),
                 updates: Updates = Updates(), optimizer: OptimizerCallable = adamw, chat: bool = True,
                 selection_window: int = 10, log_samples: SampleLog = SampleLog()):
        check_stage(stage)
        if sampling.group_size < 2:
            raise ValueError("SCoRe: sampling.group_size must be >= 2 (each attempt's baseline is the other samples' "
                             "return)")
        if loss.kl_coef:
            raise ValueError("SCoRe: loss.kl_coef is set per stage from objective.beta1 / beta2; leave it at 0")
        if env is not None and instruction is not None:
            raise ValueError("SCoRe: instruction is that of the default two-attempt environment; with env given, "
                             "put the instruction in the env")
        if task is not None:
            task_kind(task)
        # 4. (fixed per stage) the per-attempt KL coefficients: rl.update puts kl_coef[t] on attempt t's tokens.
        super().__init__(lm, sampling, replace(loss, kl_coef=turn_kl_coefs(stage, objective.beta1, objective.beta2)),
                         updates, optimizer, log_samples)
        save_settings(self, ignore=["reward", "env", "optimizer"])
        self.stage, self.objective, self.init_from, self.instruction = stage, objective, init_from, instruction
        self.task, self.env_override = task, env
        self.format = ProblemFormat(chat=chat)
        self.reward_fn = reward if reward is not None else (task_reward(task) if task is not None else None)
        self.register_buffer("recent_rewards", torch.full((max(selection_window, 1),), float("nan")))
        self.eval_pairs: list[str] = []
        self._init_done = False

    # -- set-up -----------------------------------------------------------------------------------------
    def setup(self, stage: str, dm=None) -> None:
        """The task and the problem format from the DataModule (``dm``, else the trainer's; one place says how)."""
        dm = dm if dm is not None else (self.trainer.datamodule if self._trainer is not None else None)
        dm_task = getattr(getattr(dm, "hparams", None), "task", None)
        if self.task is not None and dm_task is not None and task_kind(self.task) != task_kind(dm_task):
            raise ValueError(f"SCoRe: model task {self.task!r} but the DataModule's task is {dm_task!r}")
        self.task = self.task or dm_task
        if self.task is None:
            raise ValueError("SCoRe: no task (set model.init_args.task, or use a DataModule with a task)")
        self.format = attempt_format(getattr(dm, "problem_format", self.format), self.task, self.instruction,
                                     self.env_override is not None)
        if self.reward_fn is None:
            self.reward_fn = task_reward(self.task)

    def configure_model(self) -> None:
        """The policy and the reference (built from the base: pi_ref is the base model in both stages; Stage I's
        weights come later, :meth:`start_from_init`); idempotent. Outside a Trainer ``init_from`` is loaded here."""
        if self.policy is not None:
            return
        self.policy = self.load_policy()
        self.reference = ReferencePolicy.for_policy(self.policy, self.loss.uses_kl)
        if self._trainer is None:
            self.start_from_init()
        # FSDP2 (ModelParallelStrategy): the policy and a copy-mode reference block by block (an adapters-off
        # reference is the policy itself: its base is sharded once); nothing on one process or DDP
        shard(self, self.policy, self.reference.model)

    def start_from_init(self) -> None:
        """``init_from``'s policy weights, once, unless this run resumes from a checkpoint of its own (whose weights
        replace them: Stage I's checkpoint is then not needed). Called when fit, validate or test starts: Lightning
        has restored ``--ckpt_path`` by then, also under FSDP2, which restores after ``on_fit_start``."""
        if not self.init_from or self._init_done:
            return
        self._init_done = True
        if self._trainer is not None and self.trainer.ckpt_path is not None:
            return
        load_policy_weights(self.policy, self.init_from)

    def on_train_start(self) -> None:
        self.start_from_init()

    def on_validation_start(self) -> None:
        self.start_from_init()

    def on_test_start(self) -> None:
        self.start_from_init()

    def eval_env(self) -> Environment:
        """The environment of evaluation: ``env``, or two attempts with the instruction as a user turn."""
        if self.env_override is not None:
            return self.env_override
        return two_attempt_env(self.tokenizer, self.task, self.instruction, chat=self.format.chat)

    @property
    def env(self) -> Environment:
        """The training environment: that of evaluation, or one attempt for single-turn RL."""
        if self.env_override is None and num_attempts(self.stage) == 1:
            return SingleTurn(stops=())
        return self.eval_env()

    def response_budget(self) -> int:
        return self.sampling.max_response_tokens or 2 * self.sampling.max_turn_tokens + 512

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        cfg, obj, G = self.loss, self.objective, self.sampling.group_size
        examples = [ex for ex in batch for _ in range(G)]  # the G samples of a problem contiguous
        r = self.sample([self.format.render(self.tokenizer, ex, self.task) for ex in examples])       # 1. rollout
        r1, r2 = attempt_rewards(self.reward_fn, r.turn_texts, examples, num_attempts(self.stage))    # 2. rewards
        ref = self.reference_logprobs(r)                                                              # 3. reference
        returns = task_returns = turn_returns(r1, r2, self.stage, obj.alpha)                          # 4. bonus
        if cfg.kl_in_reward and ref is not None:                                                      #    (+ KL)
            returns = returns - turn_kl_penalty(r.old_logprobs, ref, r.loss_mask, r.turn_ids, cfg.kl_coef,
                                                cfg.kl_estimator)
        adv = token_values(turn_advantages(returns, G, obj.baseline), r.loss_mask, r.turn_ids)       # 5. advantage
        self.log_advantage_share(turn_advantages(task_returns, G, obj.baseline), G)  # the task reward's signal
        stats = self.rl_update(r, adv, ref_logprobs=ref)                                              # 6. update
        self.log_training(r, r1, r2, task_returns, ref, stats, batch_idx)   # rewards logged without the KL

    def record_final_accuracy(self, final: torch.Tensor) -> torch.Tensor:
        """This step's final-attempt accuracy over the samples of EVERY rank (a collective) into the window; returns
        the selection reward (rl.score.selection_reward). Each rank holds the same window and logs the same value,
        so ModelCheckpoint's choice does not depend on one rank's rollouts."""
        total, count = sum_over_ranks(torch.stack([final.sum(), torch.tensor(float(len(final)))]).double()).tolist()
        self.recent_rewards.copy_(torch.cat([self.recent_rewards[1:], self.recent_rewards.new_tensor([total / count])]))
        return selection_reward(self.recent_rewards)

    def log_training(self, r: Rollouts, r1, r2, returns, ref, stats: dict, batch_idx: int) -> None:
        n = len(r)
        final = r2 if r2 is not None else r1
        logs = {"train/selection_reward": self.record_final_accuracy(final), "train/acc_t1": r1.mean(),
                "train/response_length": r.response_lengths.float().mean(),
                **{f"train/{k}": v for k, v in stats.items()}}
        for t in range(returns.shape[1]):
            logs[f"train/reward_t{t + 1}"] = returns[:, t].mean()
        if ref is not None:
            kl = turn_means(kl_estimate(r.old_logprobs, ref.to(r.old_logprobs), self.loss.kl_estimator),
                            r.loss_mask, r.turn_ids, returns.shape[1])
            logs.update({f"train/kl_t{t + 1}": kl[t] for t in range(len(kl)) if not torch.isnan(kl[t])})
        if r2 is not None:
            logs.update(attempt_logs("train", *attempt_texts(r.turn_texts), attempt_metrics(r1.tolist(), r2.tolist())))
        logs.update({f"train/reward_health/{k}": v for k, v in reward_health().items()})  # this process's counts
        self.log_dict(logs, batch_size=n)
        self.log("train/reward_final", final.mean(), prog_bar=True, batch_size=n, logger=False)
        if self.log_samples.due(batch_idx):
            self.log_sample_texts("train/pairs", [pair_text(t, float(a), None if r2 is None else float(b))
                                                  for t, a, b in zip(r.turn_texts, r1, r1 if r2 is None else r2)])

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, batch: list[dict], prefix: str) -> None:
        s = self.sampling
        with full_parameters(self.policy):  # FSDP2: greedy attempts of different lengths on each rank
            out = evaluate_two_attempts(self.policy, self.tokenizer, batch, self.task, env=self.eval_env(),
                                        problem_format=self.format, greedy=True,
                                        max_turn_tokens=s.eval_max_turn_tokens or s.max_turn_tokens,
                                        max_response_tokens=self.response_budget(), batch_size=len(batch),
                                        reward=self.reward_fn, generation_kwargs=s.generation_kwargs)
        records = out["records"]
        logs = attempt_logs(prefix, [x["attempt_1"] for x in records], [x["attempt_2"] for x in records],
                            out["metrics"])
        # Means over batches weighted by batch size (and over processes): the metrics of the whole split.
        self.log_dict(logs, batch_size=len(records), on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        self.eval_pairs += [pair_text(x["turns"], x["r1"], x["r2"]) for x in records[:self.log_samples.count]]

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_sample_texts("val/pairs", self.eval_pairs)
        self.eval_pairs = []

    def on_test_epoch_end(self) -> None:
        self.log_sample_texts("test/pairs", self.eval_pairs)
        self.eval_pairs = []
