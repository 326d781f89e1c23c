"""The policy-gradient step after the rollout, without Lightning:

    advantages(...)   rewards -> advantages: GRPO / RLOO / REINFORCE with a baseline (one value per rollout)
                      or GAE with a value head (per token); the KL penalty in the reward if asked
    update(...)       epochs x mini-batches x micro-batches of the clipped policy loss (+ beta_t KL,
                      - entropy bonus, + value loss), one optimizer step per mini-batch

Normalisation: every micro-batch loss is divided by its MINI-batch's token (or sequence) count, so the
micro-batch losses add up to the mini-batch loss and the gradient of a mini-batch is the same for any
micro_batch_size (verl's agg_loss with a global token count). Under data parallelism the counts are the
mean over ranks (training.distributed.mean_over_ranks), so that the gradient averaged over ranks is that of
one process holding every rank's rollouts, whatever each rank's token count. The caller passes ``backward(loss)`` and
``step()`` (gradient clipping, optimizer step, zero_grad): Lightning's manual optimisation, or plain torch.

Forward passes run with dropout off (generation.logprobs.dropout_off): the old log-probs of the rollout
were computed that way, so on the first pass over fresh rollouts the importance ratio is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from generation.logprobs import dropout_off, sequence_logprobs
from training.distributed import mean_over_ranks
from rl.advantages import (gae, grpo_advantages, per_turn, place_rewards, reinforce_advantages, rloo_advantages,
                           whiten)
from rl.kl import ESTIMATORS, default_estimator, kl_estimate
from rl.losses import AGGREGATIONS, aggregate, clipped_policy_loss, value_loss
from rl.rollout import Rollouts

ESTIMATORS_OF_ADVANTAGE = ("grpo", "rloo", "reinforce", "gae")


@dataclass
class LossConfig:
    """Args:
        clip_low / clip_high: ratio clip range [1 - clip_low, 1 + clip_high] (clip_high None: symmetric).
        aggregation / norm_length: see ``rl.losses.aggregate`` (norm_length: Dr. GRPO's constant).
        kl_coef: beta, one value or one per turn (``kl_coef[t]`` on the tokens of turn t).
        kl_estimator / kl_in_reward: k1/k2/k3; the KL as a reward penalty (PPO) or as a loss term (GRPO). None:
            the estimator whose gradient is beta grad KL(pi || pi_ref) there (rl.kl.default_estimator: k1 in the
            reward, k2 as a loss); "k3" as a loss is verl's low_var_kl, the reverse KL's gradient (docs/rl_kl.md).
        entropy_coef: entropy bonus; value_coef / value_clip: PPO's value loss.
        temperature: the sampling temperature (log-probs are computed at it).
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
    temperature: float = 1.0

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
class Schedule:
    """epochs over each rollout batch; mini_batch_size rollouts per optimizer step (None: all of them);
    micro_batch_size rollouts per forward pass."""
    epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.micro_batch_size < 1 or (self.mini_batch_size is not None and self.mini_batch_size < 1):
            raise ValueError(f"update schedule: epochs, mini_batch_size, micro_batch_size must be >= 1, got {self}")


@torch.no_grad()
def old_values(policy, value_head, r: Rollouts, temperature: float = 1.0, micro_batch_size: int = 8) -> torch.Tensor:
    """(N, L) V(x_<t) from the policy's hidden states, dropout off, aligned with token t."""
    with dropout_off(policy):
        out = sequence_logprobs(policy, r.input_ids, r.attention_mask, temperature=temperature,
                                micro_batch_size=micro_batch_size, start=min(r.prompt_lengths), with_hidden=True)
    return value_head(out.hidden)


def sequence_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """(N,) outcome reward of each rollout: itself, or the sum over turns of (N, T) per-turn rewards."""
    return rewards if rewards.ndim == 1 else rewards.sum(dim=1)


def advantages(estimator: str, r: Rollouts, rewards: torch.Tensor, cfg: LossConfig, *, group_size: int = 1,
               ref_logprobs: torch.Tensor | None = None, values: torch.Tensor | None = None,
               baseline: torch.Tensor | None = None, normalize_std: bool = True, gamma: float = 1.0, lam: float = 1.0,
               whiten_advantages: bool = True):
    """Advantages and, for GAE, the returns: ``(A, returns)`` with A (N,) for the sequence-level estimators
    and (N, L) for GAE (returns None otherwise). ``rewards`` is (N,) or (N, T) per turn.

    With ``cfg.kl_in_reward`` the reward is penalised by beta_t * KL_t (old vs reference log-probs): summed
    over a rollout's tokens for the sequence-level estimators, per token for GAE."""
    if estimator not in ESTIMATORS_OF_ADVANTAGE:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {ESTIMATORS_OF_ADVANTAGE}")
    mask = r.loss_mask.to(rewards.device)
    penalty = None
    if cfg.kl_in_reward and ref_logprobs is not None:
        beta = per_turn(cfg.kl_coef, mask, None if r.turn_ids is None else r.turn_ids.to(mask.device))
        penalty = beta * kl_estimate(r.old_logprobs.to(mask.device), ref_logprobs.to(mask.device),
                                     cfg.kl_estimator) * mask
    if estimator == "gae":
        if values is None:
            raise ValueError("advantages: GAE needs the value head's values")
        token_rewards = place_rewards(rewards, mask, None if r.turn_ids is None else r.turn_ids.to(mask.device))
        if penalty is not None:
            token_rewards = token_rewards - penalty
        adv, returns = gae(token_rewards, values.to(mask.device), mask, gamma, lam)
        return (whiten(adv, mask) if whiten_advantages else adv), returns
    seq = sequence_rewards(rewards).float()
    if penalty is not None:
        seq = seq - penalty.sum(dim=1)
    if estimator == "grpo":
        return grpo_advantages(seq, group_size, normalize_std), None
    if estimator == "rloo":
        return rloo_advantages(seq, group_size), None
    return reinforce_advantages(seq, baseline), None


def loss_on(policy, value_head, r: Rollouts, adv: torch.Tensor, cfg: LossConfig, norm: dict, *,
            ref_logprobs=None, returns=None, values=None):
    """The loss of one micro-batch ``r`` (normalised by its mini-batch's ``norm`` counts) and its stats."""
    device = next(policy.parameters()).device
    mask = r.loss_mask.to(device)
    out = sequence_logprobs(policy, r.input_ids, r.attention_mask, temperature=cfg.temperature,
                            micro_batch_size=len(r), start=min(r.prompt_lengths), with_entropy=True,
                            with_hidden=value_head is not None)
    loss, stats = clipped_policy_loss(out.logprobs, r.old_logprobs.to(device), adv.to(device), mask, cfg.clip_low,
                                      cfg.clip_high, cfg.aggregation, **norm)
    stats["policy_loss"] = loss.detach()
    stats["entropy"] = aggregate(out.entropy.detach(), mask)
    if cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * aggregate(out.entropy, mask, cfg.aggregation, **norm)
    if ref_logprobs is not None:
        kl = kl_estimate(out.logprobs, ref_logprobs.to(device), cfg.kl_estimator)
        stats["kl"] = aggregate(kl.detach(), mask)
        if not cfg.kl_in_reward:
            beta = per_turn(cfg.kl_coef, mask, None if r.turn_ids is None else r.turn_ids.to(device))
            loss = loss + aggregate(beta * kl, mask, cfg.aggregation, **norm)
    if value_head is not None:
        v = value_head(out.hidden)
        vloss = value_loss(v, values.to(device), returns.to(device), mask, cfg.value_clip, cfg.aggregation, **norm)
        stats["value_loss"] = vloss.detach()
        loss = loss + cfg.value_coef * vloss
    return loss, stats


def update(policy, r: Rollouts, adv: torch.Tensor, cfg: LossConfig, schedule: Schedule,
           backward: Callable[[torch.Tensor], None], step: Callable[[], None], *, value_head=None,
           ref_logprobs=None, returns=None, values=None, generator: torch.Generator | None = None) -> dict[str, float]:
    """``schedule.epochs`` passes over the rollouts; each pass shuffles them into mini-batches, one
    ``step()`` per mini-batch, micro-batch losses ``backward``-ed in between. Returns the stats averaged
    over micro-batches."""
    if r.old_logprobs is None:
        raise ValueError("update: the rollouts have no old log-probs (rollout(..., compute_logprobs=True))")
    if value_head is not None and (returns is None or values is None):
        raise ValueError("update: a value head needs returns and old values (advantages('gae', ...))")
    n = len(r)
    mb = schedule.mini_batch_size or n
    sums: dict[str, float] = {}
    count = 0
    pick = lambda t, i: None if t is None else t[i.to(t.device)]  # noqa: E731
    with dropout_off(policy):
        for _ in range(schedule.epochs):
            order = torch.randperm(n, generator=generator)
            for s in range(0, n, mb):
                idx = order[s:s + mb]
                # The mini-batch's counts: every micro-batch is divided by them (see the module docstring).
                # Under data parallelism: the mean count over ranks (gradients are averaged over ranks).
                norm = {"num_tokens": mean_over_ranks(r.loss_mask[idx].sum()),
                        "num_seqs": mean_over_ranks(torch.tensor(float(len(idx)))), "norm_length": cfg.norm_length}
                for ms in range(0, len(idx), schedule.micro_batch_size):
                    sub = idx[ms:ms + schedule.micro_batch_size]
                    loss, stats = loss_on(policy, value_head, r.select(sub), pick(adv, sub), cfg, norm,
                                          ref_logprobs=pick(ref_logprobs, sub), returns=pick(returns, sub),
                                          values=pick(values, sub))
                    backward(loss)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                step()
    return {k: v / count for k, v in sums.items()}
