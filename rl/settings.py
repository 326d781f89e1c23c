"""The settings every RL method shares, grouped: how rollouts are sampled (:class:`Sampling`), the policy
loss (:class:`PolicyLoss`), how each rollout batch is used for updates (:class:`Updates`) and which samples
go to TensorBoard (:class:`SampleLog`). SearchR1 and SCoRe take them under the same names, so
``--model.init_args.sampling.temperature 0.7`` means the same in both. Each method gives its own default
instance (SCoRe: ``seq-mean-token-sum``; SearchR1: ``token-mean``). ``rl.update`` reads them directly: one
dataclass per idea, from the config to the update loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rl.kl import ESTIMATORS, default_estimator
from rl.losses import AGGREGATIONS


@dataclass
class Sampling:
    """Args:
        group_size: G samples per prompt (GRPO/RLOO groups; SCoRe's per-attempt baselines).
        temperature / top_p: sampling of training rollouts (evaluation is greedy); log-probs (old, new,
            reference) are computed at ``temperature``.
        max_turn_tokens: tokens per generated turn; ``eval_max_turn_tokens`` (None: the same) at evaluation.
        max_response_tokens: the whole response (all turns and inserted tokens); None: the method's rule.
        generation_kwargs: extra ``model.generate`` arguments.
    """
    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_turn_tokens: int = 256
    eval_max_turn_tokens: int | None = None
    max_response_tokens: int | None = None
    generation_kwargs: dict | None = None

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_turn_tokens < 1:
            raise ValueError(f"sampling: group_size and max_turn_tokens must be >= 1, got {self}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"sampling: temperature must be > 0 and top_p in (0, 1], got {self}")


@dataclass
class PolicyLoss:
    """The clipped policy-gradient loss of ``rl.update`` (+ beta_t KL, - entropy bonus, + value loss). Args:
        clip_low / clip_high: ratio clip range [1 - clip_low, 1 + clip_high] (clip_high None: symmetric).
        aggregation: ``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``
            (rl.losses.aggregate); norm_length: the constant of ``seq-mean-token-sum-norm`` (Dr. GRPO).
        kl_coef: beta, one value or one per turn (``kl_coef[t]`` on the tokens of turn t); 0: no reference.
            SCoRe sets it per stage from beta1 / beta2.
        kl_estimator / kl_in_reward: k1/k2/k3; the KL as a reward penalty (PPO) or as a loss term (GRPO). None:
            the estimator whose gradient is beta grad KL(pi || pi_ref) there (rl.kl.default_estimator: k1 in the
            reward, k2 as a loss); "k3" as a loss is verl's low_var_kl, the reverse KL's gradient (docs/rl_kl.md).
        entropy_coef: entropy bonus; value_coef / value_clip: PPO's value loss.
    """
    clip_low: float = 0.2
    clip_high: float | None = None
    aggregation: str = "token-mean"
    norm_length: int | None = None
    kl_coef: float | Sequence[float] = 0.0
    kl_estimator: str | None = None
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    value_clip: float | None = 0.2

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
        if self.kl_estimator is None:
            self.kl_estimator = default_estimator(self.kl_in_reward)
        if self.aggregation == "seq-mean-token-sum-norm" and not self.norm_length:
            raise ValueError("loss aggregation 'seq-mean-token-sum-norm' (Dr. GRPO) needs norm_length, a constant "
                             "(e.g. max_response_tokens)")
        if self.kl_estimator not in ESTIMATORS:
            raise ValueError(f"unknown KL estimator {self.kl_estimator!r}; expected one of {ESTIMATORS}")
        if self.uses_kl and self.kl_estimator == "k1" and not self.kl_in_reward:
            # d/dtheta E_pi[log pi - log pi_ref] via the k1 sample mean is E_pi[grad log pi] = 0: a penalty
            # that pulls nowhere. k1 belongs in the reward (PPO), where the policy gradient carries it.
            raise ValueError("kl_estimator 'k1' as a loss term (kl_in_reward false) has zero expected gradient; use "
                             "k3 (or k2) as a loss, or put the k1 penalty in the reward (kl_in_reward true)")

    @property
    def uses_kl(self) -> bool:
        coefs = [self.kl_coef] if isinstance(self.kl_coef, (int, float)) else list(self.kl_coef)
        return any(c > 0 for c in coefs)


@dataclass
class Updates:
    """How each rollout batch is used. Args:
        epochs: passes over the batch (PPO's epochs; 1 with one mini-batch is on-policy: ratio 1).
        mini_batch_size: rollouts per optimizer step (None: all of them).
        micro_batch_size: rollouts per forward pass (memory only).
        max_grad_norm: gradient clipping (None: none).
    """
    epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int = 8
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.micro_batch_size < 1 or (self.mini_batch_size is not None and self.mini_batch_size < 1):
            raise ValueError(f"updates: epochs, mini_batch_size, micro_batch_size must be >= 1, got {self}")


@dataclass
class SampleLog:
    """Samples written to TensorBoard's text tab: ``count`` of them every ``every`` training steps (and the
    first ``count`` of each evaluation); count 0: none."""
    count: int = 2
    every: int = 10

    def due(self, batch_idx: int) -> bool:
        return bool(self.count) and batch_idx % max(self.every, 1) == 0
