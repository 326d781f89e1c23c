"""The policy-gradient step after the rollout, without Lightning:

    advantages(...)   rewards -> advantages by a registered estimator (rl.advantages.ADVANTAGES): GRPO / RLOO /
                      REINFORCE with a baseline (one value per rollout) or GAE with a value head (per token);
                      the KL penalty in the reward if asked
    update(...)       epochs x mini-batches x micro-batches of the clipped policy loss (+ beta_t KL,
                      - entropy bonus, + value loss), one optimizer step per mini-batch

Normalisation: every micro-batch loss is divided by its MINI-batch's token (or sequence) count, so the
micro-batch losses add up to the mini-batch loss and the gradient of a mini-batch is the same for any
micro_batch_size (verl's agg_loss with a global token count). Under data parallelism the counts are the
mean over ranks (training.distributed.mean_over_ranks), so that the gradient averaged over ranks is that of
one process holding every rank's rollouts, whatever each rank's token count. The caller passes ``backward(loss)`` and
``step()`` (gradient clipping, optimizer step, zero_grad): Lightning's manual optimisation, or plain torch.
The loss and the schedule are the config's ``rl.settings.PolicyLoss`` and ``Updates``; log-probs are computed at
the sampling ``temperature``.

Forward passes run with dropout off (generation.logprobs.dropout_off): the old log-probs of the rollout
were computed that way, so on the first pass over fresh rollouts the importance ratio is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from generation.logprobs import dropout_off, sequence_logprobs
from training.distributed import mean_over_ranks
from rl.advantages import get_advantage, per_turn, place_rewards
from rl.kl import kl_estimate
from rl.losses import aggregate, clipped_policy_loss, value_loss
from rl.rollout import Rollouts
from rl.settings import PolicyLoss, Updates

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


def advantages(estimator: str, r: Rollouts, rewards: torch.Tensor, loss: PolicyLoss, *, group_size: int = 1,
               ref_logprobs: torch.Tensor | None = None, values: torch.Tensor | None = None, **options):
    """Advantages and, for a per-token estimator (GAE), the returns: ``(A, returns)`` with A (N,) for the
    sequence-level estimators and (N, L) for the per-token ones (returns None otherwise). ``rewards`` is (N,)
    or (N, T) per turn. ``estimator`` names a registered one (rl.advantages.ADVANTAGES); ``options`` are its
    keyword arguments (GRPO's ``normalize_std``, GAE's ``gamma``, ``lam``, ``whiten_advantages``, ...).

    With ``loss.kl_in_reward`` the reward is penalised by beta_t * KL_t (old vs reference log-probs): summed
    over a rollout's tokens for the sequence-level estimators, per token for the per-token ones."""
    est = get_advantage(estimator)
    est.check_options(options)
    mask = r.loss_mask.to(rewards.device)
    turn_ids = None if r.turn_ids is None else r.turn_ids.to(mask.device)
    penalty = None
    if loss.kl_in_reward and ref_logprobs is not None:
        beta = per_turn(loss.kl_coef, mask, turn_ids)
        penalty = beta * kl_estimate(r.old_logprobs.to(mask.device), ref_logprobs.to(mask.device),
                                     loss.kl_estimator) * mask
    if est.per_token:
        if values is None:
            raise ValueError(f"advantages: {estimator!r} needs the value head's values")
        token_rewards = place_rewards(rewards, mask, turn_ids)
        if penalty is not None:
            token_rewards = token_rewards - penalty
        return est.fn(token_rewards, values.to(mask.device), mask, **options)
    seq = sequence_rewards(rewards).float()
    if penalty is not None:
        seq = seq - penalty.sum(dim=1)
    return est.fn(seq, group_size, **options), None


def loss_on(policy, value_head, r: Rollouts, adv: torch.Tensor, cfg: PolicyLoss, norm: dict, *,
            temperature: float = 1.0, ref_logprobs=None, returns=None, values=None):
    """The loss of one micro-batch ``r`` (normalised by its mini-batch's ``norm`` counts) and its stats."""
    device = next(policy.parameters()).device
    mask = r.loss_mask.to(device)
    out = sequence_logprobs(policy, r.input_ids, r.attention_mask, temperature=temperature,
                            micro_batch_size=len(r), start=min(r.prompt_lengths), with_entropy=True,
                            with_hidden=value_head is not None, prefix=r.prefix)
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


def update(policy, r: Rollouts, adv: torch.Tensor, cfg: PolicyLoss, schedule: Updates,
           backward: Callable[[torch.Tensor], None], step: Callable[[], None], *, temperature: float = 1.0,
           value_head=None, ref_logprobs=None, returns=None, values=None,
           generator: torch.Generator | None = None) -> dict[str, float]:
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
                                          temperature=temperature, ref_logprobs=pick(ref_logprobs, sub),
                                          returns=pick(returns, sub), values=pick(values, sub))
                    backward(loss)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                step()
    return {k: v / count for k, v in sums.items()}
