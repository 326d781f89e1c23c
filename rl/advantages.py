"""Advantage estimators: GRPO's group-normalised outcome advantage and PPO's GAE."""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al., 2024): for G samples o_1..o_G of the same prompt with rewards r_1..r_G,

        A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)     (normalize_std=True)
        A_i =  r_i - mean(r_1..r_G)                              (normalize_std=False, Dr. GRPO)

    ``std`` is the unbiased sample std (torch default, as in TRL). ``rewards`` is (N,) with the G samples
    of each prompt contiguous, N = num_prompts * G. Returns (N,); every token of o_i gets A_i.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"grpo_advantages: rewards of shape {tuple(rewards.shape)} is not a multiple of "
                         f"group_size={group_size}")
    groups = rewards.float().view(-1, group_size)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
        adv = adv / (std + eps)
    return adv.view(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over the tokens of a response:

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lambda * A_{t+1},   R_t = A_t + V_t

    with V and A zero after the last action. ``rewards``, ``values``, ``mask`` are (B, T); ``mask`` is 1
    on the policy's own tokens. Masked positions (prompt, inserted ``<information>``) are skipped: the
    recursion jumps from one action to the next action, so a search result is part of the environment's
    transition, not a step. Returns (advantages, returns), zero where mask is 0.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"gae: shapes differ: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.float()
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float32, device=rewards.device)
    next_value = torch.zeros(B, device=rewards.device)
    next_adv = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # Only actions update the carried "next" quantities; masked tokens pass them through.
        next_value = torch.where(m > 0, values[:, t].float(), next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    returns = (adv + values * mask) * mask
    return adv, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (PPO's advantage normalisation); zero where mask is 0."""
    mask = mask.float()
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    out = (x - mean) if shift_mean else x
    return out * torch.rsqrt(var + eps) * mask
