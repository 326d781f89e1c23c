"""The settings every RL method shares, grouped: how rollouts are sampled (:class:`Sampling`), the policy
loss (:class:`PolicyLoss`) and how each rollout batch is used for updates (:class:`Updates`). SearchR1 and SCoRe
take them under the same names, so ``--model.init_args.sampling.temperature 0.7`` means the same in both. Each
method gives its own default instance (SCoRe: ``seq-mean-token-sum``; SearchR1: ``token-mean``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sampling:
    """Args:
        group_size: G samples per prompt (GRPO/RLOO groups; SCoRe's per-attempt baselines).
        temperature / top_p: sampling of training rollouts (evaluation is greedy); log-probs are computed at
            ``temperature``.
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
    """The clipped policy-gradient loss (``rl.update.LossConfig`` is built from it with the sampling
    temperature and the response length). Args:
        clip_low / clip_high: ratio clip range [1 - clip_low, 1 + clip_high] (clip_high None: symmetric).
        aggregation: ``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``
            (rl.losses.aggregate).
        kl_estimator / kl_in_reward: k1/k2/k3 and where the KL goes (docs/rl_kl.md); None: the estimator whose
            gradient is the paper's there (k1 in the reward, k2 as a loss).
        entropy_coef / value_coef / value_clip: entropy bonus; PPO's value loss.
    """
    clip_low: float = 0.2
    clip_high: float | None = None
    aggregation: str = "token-mean"
    kl_estimator: str | None = None
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    value_clip: float | None = 0.2


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
