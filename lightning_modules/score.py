"""SCoRe: training an LLM to correct itself with two-stage multi-turn RL (Kumar et al., 2024; docs/methods/score.md).
The objective (returns, KL coefficients and baselines per attempt) is rl.score; the rollout, reference and
update are the RL core's.

One training step, for a batch of P problems (G samples each):
  1. rollout:    attempt 1, the fixed instruction, attempt 2, all sampled by the current policy (rl.rollout with
                 rl.self_correction.two_attempt_env); the single-turn ablation samples attempt 1 only
  2. rewards:    r(y1), r(y2) by the task's checker, the evaluation metric (rl.self_correction.task_reward)
  3. reference:  log pi_ref of every generated token (rl.policy: the LoRA base with adapters off, or a frozen copy)
  4. per attempt: the KL coefficients (Stage I: beta2 on attempt 1, beta1 on attempt 2; Stage II: beta1 on both)
                 and the returns with the shaped bonus (rl.score.turn_returns; KL-in-reward variant optional)
  5. advantage:  each attempt's return minus its RLOO baseline, on that attempt's tokens only (gamma = 0)
  6. update:     the policy-gradient loss + per-attempt KL (rl.update; one epoch, one mini-batch: REINFORCE)
Validation/test: greedy two-attempt evaluation (rl.self_correction.evaluate_two_attempts): Accuracy@t1/t2,
Delta, Delta_i->c, Delta_c->i, edit distance between the attempts.

Stages: ``stage: I``, then ``stage: II`` with ``init_from`` the Stage I checkpoint (its policy weights: a ``.ckpt``
file, or the folder an FSDP2 run saves; the KL reference stays the base model, pi_ref of both stages). ``stage: II``
without ``init_from`` is the "no Stage I" ablation, ``alpha: 0`` the "no shaping" one, ``stage: single_turn`` RL on
attempt 1 only. Resuming either stage with ``--ckpt_path`` restores weights, optimizer, RNG and step, and never
reads ``init_from`` (Stage I's checkpoint may be gone by then).

KL to the reference (docs/rl_kl.md): by default k1 in each attempt's return (REINFORCE on r - beta k1), whose
gradient is the paper's beta grad KL(pi || pi_ref); k2 as a loss term has the same gradient, k3 as a loss term
(verl's low_var_kl) that of the reverse KL(pi_ref || pi).

Checkpoint selection: by training reward, as the paper does: ``train/selection_reward`` is the accuracy of the
final attempt (attempt 2; attempt 1 for single-turn RL) on the training samples of EVERY rank (the same value on
each, so that ModelCheckpoint's choice is global under data parallelism), averaged over the last
``selection_window`` steps, steps before the first counted as 0 (``rl.score.selection_reward``); the configs'
ModelCheckpoint keeps the best by it (no dev split is used).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.cli import OptimizerCallable

from training.models import DEFAULT_GENERATOR, load_tokenizer
from rl.policy_module import PolicyGradientModule
from training.sharding import full_parameters, shard
from training.distributed import sum_over_ranks
from rl.envs import SingleTurn
from rl.kl import kl_estimate
from rl.policy import ReferencePolicy
from rl.rollout import Rollouts, rollout
from rl.score import (BASELINES, attempt_rewards, check_stage, edit_distance_ratio, num_attempts, selection_reward,
                      token_values, turn_advantages, turn_kl_coefs, turn_kl_penalty, turn_means, turn_returns)
from rl.self_correction import (ProblemFormat, attempt_metrics, attempt_texts, evaluate_two_attempts, task_kind,
                                reward_health, task_reward, two_attempt_env)
from rl.update import LossConfig, Schedule

METRIC_NAMES = {"accuracy@t1": "acc_t1", "accuracy@t2": "acc_t2", "delta(t1,t2)": "delta",
                "delta_i->c": "delta_i2c", "delta_c->i": "delta_c2i"}


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-6, weight_decay=0.0)


def read_module_state(path: str) -> dict:
    """The module state dict (whole tensors, on CPU) of a Lightning checkpoint: a ``.ckpt`` file, or the folder of a
    sharded checkpoint (FSDP2: one shard per rank, torch.distributed.checkpoint), of which only the weights are
    read (not the optimizer state)."""
    from pathlib import Path

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    if folder.is_dir():
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        if not (folder / ".metadata").is_file():
            raise ValueError(f"init_from: {path} is a folder but not a sharded checkpoint (no .metadata file)")
        return _load_state_dict_from_keys({"state_dict"}, checkpoint_id=str(folder)).get("state_dict", {})
    return torch.load(folder, map_location="cpu", weights_only=True).get("state_dict", {})


def load_policy_weights(policy: torch.nn.Module, path: str) -> None:
    """The ``policy.*`` weights of a Lightning checkpoint (Stage I's; a file or an FSDP2 folder) into ``policy``,
    strictly; ``policy`` may itself be sharded (each rank keeps its shard of the whole tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = {k[len("policy."):]: v for k, v in read_module_state(path).items() if k.startswith("policy.")}
    if not state:
        raise ValueError(f"init_from: {path} holds no policy.* weights (not a SCoRe/SearchR1 checkpoint?)")
    try:
        set_model_state_dict(policy, state, options=StateDictOptions(full_state_dict=True, strict=True))
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"init_from: {path} does not fit this policy (same model and LoRA settings?): "
                         f"{str(err)[:500]}") from None


class SCoRe(PolicyGradientModule):
    """Args:
        model_name_or_path / dtype / lora / load_in_4bit: the policy, built in ``configure_model``.
        stage: ``I``, ``II`` or ``single_turn`` (ablation: RL on attempt 1 only; evaluated on two attempts).
        init_from: a checkpoint (file or FSDP2 folder) whose policy weights start this run (Stage II from Stage I's
            best checkpoint); read when training starts, not when it resumes from its own checkpoint.
        task: gsm8k / math / math500 / humaneval / mbpp, for the reward and the instruction (None: the
            DataModule's ``task``). reward: a ``reward(responses, examples)`` replacing the task's.
        instruction: the self-correction instruction (None: the paper's, by task kind).
        group_size: G samples per problem; the baseline of each attempt comes from the other samples.
        alpha / beta1 / beta2: the shaping bonus and the KL coefficients (paper, MATH: 10, 0.01, 0.1).
        baseline: ``rloo`` (leave-one-out mean of the group) or ``group_mean``.
        kl_estimator / kl_in_reward: rl.kl's estimator; the KL as a penalty in each attempt's own return (default)
            or as a loss term. None: the one with the paper's gradient there (k1 in the reward, k2 as a loss); k3 as
            a loss is verl's low_var_kl, the gradient of the reverse KL. docs/rl_kl.md.
        max_turn_tokens / max_response_tokens / temperature / top_p: sampling per attempt (evaluation is greedy;
            ``eval_max_turn_tokens`` defaults to max_turn_tokens). max_response_tokens None: 2 turns + 512.
        loss_aggregation: ``seq-mean-token-sum`` (default) is REINFORCE's sum_t grad log pi over a response,
            averaged over responses; the KL is then the sequence KL, the sum of its per-token terms.
        epochs / mini_batch_size / micro_batch_size / clip_low / clip_high: rl.update's schedule and clip
            (1 epoch and one mini-batch: on-policy, ratio 1, the clip never acts: plain REINFORCE).
        selection_window: steps averaged in ``train/selection_reward`` (checkpoint selection).
        log_pairs / log_pairs_every: sampled (attempt 1, attempt 2) pairs written to TensorBoard.
        precision: the LM's compute precision for rollouts, log-probs and updates (``auto``, ``fp32``, ``bf16``;
            None: ``$RAGKIT_PRECISION``): the encoders' rule, see training.precision.set_precision.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_GENERATOR, dtype: str = "float32", lora: dict | None = None,
                 load_in_4bit: bool = False, stage: str = "I", init_from: str | None = None, task: str | None = None,
                 reward: Callable | None = None, instruction: str | None = None, group_size: int = 4,
                 alpha: float = 10.0, beta1: float = 0.01, beta2: float = 0.1, baseline: str = "rloo",
                 kl_estimator: str | None = None, kl_in_reward: bool = True, max_turn_tokens: int = 256,
                 max_response_tokens: int | None = None, eval_max_turn_tokens: int | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, loss_aggregation: str = "seq-mean-token-sum",
                 clip_low: float = 0.2, clip_high: float | None = None, epochs: int = 1,
                 mini_batch_size: int | None = None, micro_batch_size: int = 8, max_grad_norm: float | None = 1.0,
                 optimizer: OptimizerCallable = adamw, chat: bool = True, selection_window: int = 10,
                 log_pairs: int = 2, log_pairs_every: int = 10, generation_kwargs: dict | None = None,
                 precision: str | None = None):
        super().__init__(max_grad_norm)
        self.save_hyperparameters(ignore=["reward", "optimizer", "generation_kwargs"])
        check_stage(stage)
        # a negative bonus rewards making attempt 2 worse; a negative KL coefficient pushes away from the reference
        if not all(c >= 0 and c != float("inf") for c in (alpha, beta1, beta2)):
            raise ValueError(f"SCoRe: alpha, beta1 and beta2 must be finite and >= 0, got alpha={alpha}, "
                             f"beta1={beta1}, beta2={beta2}")
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
        if group_size < 2:
            raise ValueError("SCoRe: group_size must be >= 2 (each attempt's baseline is the other samples' return)")
        if load_in_4bit and lora is None:
            raise ValueError("load_in_4bit needs lora: a 4-bit base cannot be trained directly")
        if task is not None:
            task_kind(task)
        self.max_response_tokens = max_response_tokens or 2 * max_turn_tokens + 512
        # 4. (fixed per stage) the per-attempt KL coefficients: rl.update puts kl_coef[t] on attempt t's tokens.
        self.loss_config = LossConfig(clip_low, clip_high, loss_aggregation, self.max_response_tokens,
                                      turn_kl_coefs(stage, beta1, beta2), kl_estimator, kl_in_reward, 0.0,
                                      temperature=temperature)
        self.schedule = Schedule(epochs, mini_batch_size, micro_batch_size)
        self.optimizer_factory, self.generation_kwargs, self.reward_override = optimizer, generation_kwargs, reward
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.policy = self.reference = None
        self.task = task
        self.format = ProblemFormat(chat=chat)
        self.reward_fn = reward if reward is not None else (task_reward(task) if task is not None else None)
        self.register_buffer("recent_rewards", torch.full((max(selection_window, 1),), float("nan")))
        self.eval_pairs: list[dict] = []
        self._init_done = False

    # -- set-up -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The task and the problem format from the DataModule (one place says how a problem is shown)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        dm_task = getattr(getattr(dm, "hparams", None), "task", None)
        if self.task is not None and dm_task is not None and task_kind(self.task) != task_kind(dm_task):
            raise ValueError(f"SCoRe: model task {self.task!r} but the DataModule's task is {dm_task!r}")
        self.task = self.task or dm_task
        if self.task is None:
            raise ValueError("SCoRe: no task (set model.init_args.task, or use a DataModule with a task)")
        if hasattr(dm, "problem_format"):
            self.format = dm.problem_format
        if self.reward_fn is None:
            self.reward_fn = task_reward(self.task)

    def configure_model(self) -> None:
        """The policy and the reference (built from the base: pi_ref is the base model in both stages; Stage I's
        weights come later, :meth:`start_from_init`); idempotent. Outside a Trainer ``init_from`` is loaded here."""
        if self.policy is not None:
            return
        self.policy = self.load_policy()
        self.reference = ReferencePolicy.for_policy(self.policy, self.loss_config.uses_kl)
        if self._trainer is None:
            self.start_from_init()
        # FSDP2 (ModelParallelStrategy): the policy and a copy-mode reference block by block (an adapters-off
        # reference is the policy itself: its base is sharded once); nothing on one process or DDP
        shard(self, self.policy, self.reference.model)

    def start_from_init(self) -> None:
        """``init_from``'s policy weights, once, unless this run resumes from a checkpoint of its own (whose weights
        replace them: Stage I's checkpoint is then not needed). Called when fit, validate or test starts: Lightning
        has restored ``--ckpt_path`` by then, also under FSDP2, which restores after ``on_fit_start``."""
        if not self.hparams.init_from or self._init_done:
            return
        self._init_done = True
        if self._trainer is not None and self.trainer.ckpt_path is not None:
            return
        load_policy_weights(self.policy, self.hparams.init_from)

    def on_train_start(self) -> None:
        self.start_from_init()

    def on_validation_start(self) -> None:
        self.start_from_init()

    def on_test_start(self) -> None:
        self.start_from_init()

    @property
    def env(self):
        """The training environment: two attempts (the instruction as a user turn), or one for single-turn RL."""
        if num_attempts(self.hparams.stage) == 1:
            return SingleTurn(stops=())
        return two_attempt_env(self.tokenizer, self.task, self.hparams.instruction, chat=self.format.chat)

    def sample(self, prompts: list[str]) -> Rollouts:
        hp = self.hparams
        # FSDP2: whole parameters on each rank for the rollout, so ranks need not generate in lockstep
        with full_parameters(self.policy):
            return rollout(self.policy, self.tokenizer, prompts, self.env, max_turn_tokens=hp.max_turn_tokens,
                           max_response_tokens=self.max_response_tokens, temperature=hp.temperature, top_p=hp.top_p,
                           logprob_micro_batch_size=hp.micro_batch_size, generation_kwargs=self.generation_kwargs)

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        hp, cfg = self.hparams, self.loss_config
        examples = [ex for ex in batch for _ in range(hp.group_size)]  # the G samples of a problem contiguous
        r = self.sample([self.format.render(self.tokenizer, ex, self.task) for ex in examples])       # 1. rollout
        r1, r2 = attempt_rewards(self.reward_fn, r.turn_texts, examples, num_attempts(hp.stage))      # 2. rewards
        ref = self.reference.logprobs(self.policy, r.tokens, cfg.temperature, hp.micro_batch_size,    # 3. reference
                                      min(r.prompt_lengths))
        returns = task_returns = turn_returns(r1, r2, hp.stage, hp.alpha)                             # 4. bonus
        if cfg.kl_in_reward and ref is not None:                                                      #    (+ KL)
            returns = returns - turn_kl_penalty(r.old_logprobs, ref, r.loss_mask, r.turn_ids, cfg.kl_coef,
                                                cfg.kl_estimator)
        adv = token_values(turn_advantages(returns, hp.group_size, hp.baseline), r.loss_mask, r.turn_ids)  # 5.
        stats = self.rl_update(self.policy, r, adv, cfg, self.schedule, ref_logprobs=ref)             # 6. update
        self.log_training(r, r1, r2, task_returns, ref, stats, batch_idx)   # rewards logged without the KL

    def record_final_accuracy(self, final: torch.Tensor) -> torch.Tensor:
        """This step's final-attempt accuracy over the samples of EVERY rank (a collective) into the window; returns
        the selection reward (rl.score.selection_reward). Each rank holds the same window and logs the same value,
        so ModelCheckpoint's choice does not depend on one rank's rollouts."""
        total, count = sum_over_ranks(torch.stack([final.sum(), torch.tensor(float(len(final)))]).double()).tolist()
        self.recent_rewards.copy_(torch.cat([self.recent_rewards[1:], self.recent_rewards.new_tensor([total / count])]))
        return selection_reward(self.recent_rewards)

    def log_training(self, r: Rollouts, r1, r2, returns, ref, stats: dict, batch_idx: int) -> None:
        hp, n = self.hparams, len(r)
        final = r2 if r2 is not None else r1
        logs = {"train/selection_reward": self.record_final_accuracy(final), "train/acc_t1": r1.mean(),
                "train/response_length": r.response_lengths.float().mean(),
                **{f"train/{k}": v for k, v in stats.items()}}
        for t in range(returns.shape[1]):
            logs[f"train/reward_t{t + 1}"] = returns[:, t].mean()
        if ref is not None:
            kl = turn_means(kl_estimate(r.old_logprobs, ref.to(r.old_logprobs), self.loss_config.kl_estimator),
                            r.loss_mask, r.turn_ids, returns.shape[1])
            logs.update({f"train/kl_t{t + 1}": kl[t] for t in range(len(kl)) if not torch.isnan(kl[t])})
        if r2 is not None:
            m = attempt_metrics(r1.tolist(), r2.tolist())
            logs.update({f"train/{METRIC_NAMES[k]}": v for k, v in m.items() if k in METRIC_NAMES})
            first, second = attempt_texts(r.turn_texts)
            logs["train/edit_distance"] = sum(edit_distance_ratio(first, second)) / n
        logs.update({f"train/reward_health/{k}": v for k, v in reward_health().items()})  # this process's counts
        self.log_dict(logs, batch_size=n)
        self.log("train/reward_final", final.mean(), prog_bar=True, batch_size=n, logger=False)
        if hp.log_pairs and batch_idx % max(hp.log_pairs_every, 1) == 0:
            self.log_pairs("train/pairs", [{"turns": t, "r1": float(a), "r2": None if r2 is None else float(b)}
                                           for t, a, b in zip(r.turn_texts, r1, r1 if r2 is None else r2)])

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, batch: list[dict], prefix: str) -> None:
        hp = self.hparams
        with full_parameters(self.policy):  # FSDP2: greedy attempts of different lengths on each rank
            out = evaluate_two_attempts(self.policy, self.tokenizer, batch, self.task,
                                        env=two_attempt_env(self.tokenizer, self.task, hp.instruction,
                                                            chat=self.format.chat),
                                        problem_format=self.format, greedy=True,
                                        max_turn_tokens=hp.eval_max_turn_tokens or hp.max_turn_tokens,
                                        max_response_tokens=self.max_response_tokens, batch_size=len(batch),
                                        reward=self.reward_fn, generation_kwargs=self.generation_kwargs)
        records, n = out["records"], len(out["records"])
        logs = {f"{prefix}/{METRIC_NAMES[k]}": v for k, v in out["metrics"].items() if k in METRIC_NAMES}
        logs[f"{prefix}/edit_distance"] = sum(edit_distance_ratio([x["attempt_1"] for x in records],
                                                                  [x["attempt_2"] for x in records])) / n
        # Means over batches weighted by batch size (and over processes): the metrics of the whole split.
        self.log_dict(logs, batch_size=n, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        self.eval_pairs += [{"turns": x["turns"], "r1": x["r1"], "r2": x["r2"]} for x in records[:hp.log_pairs]]

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_pairs("val/pairs", self.eval_pairs[:self.hparams.log_pairs])
        self.eval_pairs = []

    def on_test_epoch_end(self) -> None:
        self.log_pairs("test/pairs", self.eval_pairs[:self.hparams.log_pairs])
        self.eval_pairs = []

    def log_pairs(self, tag: str, pairs: list[dict]) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_text") or not pairs:
            return
        rows = []
        for p in pairs[:self.hparams.log_pairs]:
            first, second = attempt_texts([p["turns"]])
            rows.append(f"**r1 {p['r1']:.0f}, r2 {p['r2'] if p['r2'] is None else format(p['r2'], '.0f')}**\n\n"
                        f"attempt 1:\n\n    {first[0]!r}\n\nattempt 2:\n\n    {second[0]!r}")
        experiment.add_text(tag, "\n\n---\n\n".join(rows), self.global_step)
