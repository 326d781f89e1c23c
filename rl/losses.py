"""Policy-gradient losses with masks: the clipped surrogate (PPO/GRPO, separate low/high clip ranges as
in DAPO), the clipped value loss, entropy, and the token-aggregation modes that decide how per-token
terms become one scalar. ``mask`` is (B, T) and is 1 only on tokens the policy generated: prompt and
inserted ``<information>`` tokens are 0 and contribute nothing.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              norm_length: int | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar over the masked tokens.

        token-mean:              sum_{i,t} m x / sum_{i,t} m                    (DAPO; every token weighs the same)
        seq-mean-token-mean:     1/B sum_i (sum_t m x / sum_t m)                (GRPO paper; each sequence weighs the same)
        seq-mean-token-sum:      1/B sum_i sum_t m x
        seq-mean-token-sum-norm: 1/B sum_i sum_t m x / L, L = norm_length or T  (Dr. GRPO; no length bias)

    A sequence without any masked-in token contributes 0 (and, in seq-mean-token-mean, is still counted in B).
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    per_seq = (values * mask).sum(dim=1)
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(dim=1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum":
        return per_seq.mean()
    if mode == "seq-mean-token-sum-norm":
        return (per_seq / (norm_length or values.shape[1])).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 0.2, clip_high: float | None = None,
                        aggregation: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, per token t of response i, with rho = exp(log pi_theta - log pi_old):

        L_{i,t} = -min( rho A,  clip(rho, 1 - eps_low, 1 + eps_high) A )

    aggregated over masked tokens with :func:`aggregate`. ``advantages`` is (B, T), or (B,) for one
    advantage per sequence (GRPO), broadcast over its tokens. ``clip_high`` defaults to ``clip_low``.
    Returns the loss and stats: clip fraction (tokens where the clipped term is the one used) and the
    k3 approximate KL(pi_old || pi_theta).
    """
    clip_high = clip_low if clip_high is None else clip_high
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        stats = {
            "clip_fraction": ((clipped < unclipped).float() * m).sum() / n,
            "approx_kl": ((torch.exp(-log_ratio) - 1 + log_ratio) * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2, aggregation: str = "token-mean") -> torch.Tensor:
    """PPO clipped value loss: 1/2 max( (V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2 ) per token."""
    err = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err = torch.maximum(err, (v_clipped - returns) ** 2)
    return 0.5 * aggregate(err, mask, aggregation)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v, (B, T, V) -> (B, T)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(labels_t) under softmax(logits_t / temperature); (B, T, V), (B, T) -> (B, T)."""
    logits = logits.float() / temperature
    return torch.gather(torch.log_softmax(logits, dim=-1), -1, labels.unsqueeze(-1)).squeeze(-1)
