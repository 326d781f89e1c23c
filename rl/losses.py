"""Policy-gradient losses with masks: the clipped surrogate (PPO/GRPO, separate low/high clip ranges as
in DAPO), the clipped value loss, entropy, and the token-aggregation modes that decide how per-token
terms become one scalar. ``mask`` is (B, T) and is 1 only on tokens the policy generated: prompt and
inserted ``<information>`` tokens are 0 and contribute nothing.
"""

from __future__ import annotations

import torch

from generation.logprobs import entropy_from_logits, logprobs_from_logits  # noqa: F401  (re-exported)

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *, num_tokens=None,
              num_seqs: int | None = None, norm_length: int | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar over the masked tokens.

        token-mean:              sum_{i,t} m x / N_tok                      (DAPO; every token weighs the same)
        seq-mean-token-mean:     1/N_seq sum_i (sum_t m x / sum_t m)        (GRPO paper; each sequence weighs the same)
        seq-mean-token-sum:      1/N_seq sum_i sum_t m x
        seq-mean-token-sum-norm: 1/N_seq sum_i sum_t m x / L_norm           (Dr. GRPO; L_norm a constant)

    ``num_tokens`` (N_tok) and ``num_seqs`` (N_seq) default to this batch's masked tokens and rows. When a
    mini-batch is split into micro-batches, pass the MINI-batch's counts: the micro-batch losses then sum to
    the mini-batch loss exactly, and the gradient does not depend on the micro-batch size (a per-micro-batch
    denominator weights every micro-batch alike, whatever its number of tokens). ``norm_length`` must be
    given for the Dr. GRPO mode (e.g. the maximum response length): a padded width would vary per batch.
    A sequence without any masked-in token contributes 0 (and is still counted in N_seq).
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        n = mask.sum().clamp(min=1) if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype).clamp(min=1)
        return (values * mask).sum() / n
    per_seq = (values * mask).sum(dim=1)
    n_seq = values.shape[0] if num_seqs is None else num_seqs
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(dim=1).clamp(min=1)).sum() / n_seq
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        if not norm_length:
            raise ValueError("aggregate: 'seq-mean-token-sum-norm' (Dr. GRPO) needs a constant norm_length "
                             "(e.g. the maximum response length)")
        return per_seq.sum() / (n_seq * norm_length)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 0.2, clip_high: float | None = None,
                        aggregation: str = "token-mean", **norm) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, per token t of response i, with rho = exp(log pi_theta - log pi_old):

        L_{i,t} = -min( rho A,  clip(rho, 1 - eps_low, 1 + eps_high) A )

    aggregated over masked tokens with :func:`aggregate` (``norm``: its num_tokens / num_seqs /
    norm_length). ``advantages`` is (B, T), or (B,) for one advantage per sequence (GRPO), broadcast over
    its tokens. ``clip_high`` defaults to ``clip_low``. Returns the loss and stats: clip fraction (tokens
    where the clipped term is the one used) and approx_kl, the k3 estimate of KL(pi_old || pi_theta) on
    the old policy's samples, exp(r) - 1 - r with r = log pi_theta - log pi_old.
    """
    clip_high = clip_low if clip_high is None else clip_high
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation, **norm)
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        stats = {
            "clip_fraction": ((clipped < unclipped).float() * m).sum() / n,
            "approx_kl": ((torch.exp(log_ratio) - 1 - log_ratio) * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2, aggregation: str = "token-mean", **norm) -> torch.Tensor:
    """PPO clipped value loss: 1/2 max( (V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2 ) per token."""
    err = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err = torch.maximum(err, (v_clipped - returns) ** 2)
    return 0.5 * aggregate(err, mask, aggregation, **norm)
