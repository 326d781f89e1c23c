"""Advantage estimators and reward placement.

Sequence-level (one advantage per rollout, every generated token of it gets it): GRPO (group-normalised,
with or without the std: Dr. GRPO), RLOO (leave-one-out group baseline), REINFORCE with a baseline (the
batch mean, or a given baseline such as a greedy rollout's reward, ReMax). Token-level: GAE over the
policy's own tokens with a value function. :func:`place_rewards` puts outcome rewards on tokens (the last
generated token of the rollout, or of each turn); :func:`per_turn` spreads per-turn coefficients (KL,
bonuses) over the tokens of their turn.

Estimators are registered by name (:func:`register_advantage`, as verl's ``register_adv_est``): a method's
``algorithm`` names one, and a new estimator is one decorated function in a file of its own, named by its import
path (``algorithm: my_module.my_estimator``; docs/extending.md). A sequence-level estimator is
``fn(rewards (N,), group_size, **options) -> (N,)``; a per-token one (``per_token=True``) is
``fn(token_rewards, values, mask, **options) -> (advantages, returns)``, all (N, L), and gets a value head
(``value_head=True``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al., 2024): for G samples o_1..o_G of the same prompt with rewards r_1..r_G,

        A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)     (normalize_std=True)
        A_i =  r_i - mean(r_1..r_G)                              (normalize_std=False, Dr. GRPO)

    ``std`` is the unbiased sample std (torch default, as in TRL). ``rewards`` is (N,) with the G samples
    of each prompt contiguous, N = num_prompts * G. Returns (N,); every token of o_i gets A_i.
    """
    groups = _groups(rewards, group_size, "grpo_advantages")
    adv = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
        adv = adv / (std + eps)
    return adv.view(-1)


def _groups(rewards: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{name}: rewards of shape {tuple(rewards.shape)} is not a multiple of "
                         f"group_size={group_size}")
    return rewards.float().view(-1, group_size)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al., 2024): each sample's baseline is the mean reward of the OTHER samples of its
    prompt,

        A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean(r_1..r_G)).

    ``rewards`` (N,) with the G samples of a prompt contiguous; G >= 2."""
    if group_size < 2:
        raise ValueError("rloo_advantages: group_size must be >= 2 (the baseline is the other samples)")
    groups = _groups(rewards, group_size, "rloo_advantages")
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).view(-1)


def nonzero_group_share(advantages: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """Share of prompt groups (``group_size`` contiguous rows) whose advantages are not all zero,

        share = #{groups g : max_{i in g} |A_i| > atol} / #groups,

    for (N,) advantages (a scalar) or (N, T) advantages per turn (one share per turn, (T,)). Under a group baseline
    (RLOO, GRPO) a group whose samples all got the same return has A = 0 on every row and moves nothing: this is the
    share of the batch that carries a learning signal. ``atol`` absorbs the baseline's rounding."""
    a = advantages.detach().float()
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or group_size < 1 or a.shape[0] % group_size:
        raise ValueError(f"nonzero_group_share: advantages of shape {tuple(advantages.shape)} do not split into "
                         f"groups of {group_size} rows")
    share = (a.abs() > atol).view(-1, group_size, a.shape[1]).any(dim=1).float().mean(dim=0)
    return share if advantages.ndim == 2 else share[0]


def reinforce_advantages(rewards: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE with a baseline: A_i = r_i - b_i, with b the batch mean reward when ``baseline`` is None,
    or the given (N,) baseline (e.g. the reward of a greedy rollout of the same prompt, ReMax)."""
    rewards = rewards.float()
    if baseline is None:
        return rewards - rewards.mean()
    if baseline.shape != rewards.shape:
        raise ValueError(f"reinforce_advantages: baseline {tuple(baseline.shape)} vs rewards {tuple(rewards.shape)}")
    return rewards - baseline.float()


def last_token_positions(loss_mask: torch.Tensor, turn_ids: torch.Tensor | None = None,
                         turn: int | None = None) -> torch.Tensor:
    """(N,) column of the last loss token of each row (of turn ``turn`` when given); -1 where there is none."""
    mask = loss_mask.bool()
    if turn is not None:
        if turn_ids is None:
            raise ValueError("last_token_positions: a turn was asked for but the batch has no turn_ids")
        mask = mask & (turn_ids == turn)
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, cols, torch.full_like(cols, -1)).max(dim=1).values


def place_rewards(rewards: torch.Tensor, loss_mask: torch.Tensor, turn_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N, L) token rewards: ``rewards`` (N,) on each row's last generated token, or (N, T) per turn, the
    reward of turn t on the last generated token of turn t (a multi-turn reward: SCoRe's attempts).

    A reward that has no token to sit on (a row, or a turn, without any generated token) is refused with
    an error naming the row: it would otherwise be lost silently. A zero reward there loses nothing and
    is allowed (e.g. the missing second attempt of a row that used its budget on the first)."""
    if rewards.ndim == 1:
        rewards, turn_ids = rewards[:, None], None
    if rewards.ndim != 2 or rewards.shape[0] != loss_mask.shape[0]:
        raise ValueError(f"place_rewards: rewards {tuple(rewards.shape)} for a batch of {loss_mask.shape[0]} rows")
    out = torch.zeros(loss_mask.shape, dtype=torch.float32, device=loss_mask.device)
    rows = torch.arange(loss_mask.shape[0], device=loss_mask.device)
    for t in range(rewards.shape[1]):
        pos = last_token_positions(loss_mask, turn_ids, t if rewards.shape[1] > 1 or turn_ids is not None else None)
        r = rewards[:, t].to(out.device, torch.float32)
        lost = (pos < 0) & (r != 0)
        if bool(lost.any()):
            i = int(lost.nonzero()[0])
            where = f"turn {t} of row {i}" if rewards.shape[1] > 1 else f"row {i}"
            raise ValueError(f"place_rewards: reward {float(r[i])} for {where}, which has no generated token")
        ok = pos >= 0
        out[rows[ok], pos[ok]] += r[ok]
    return out


def per_turn(coefficients: float | Sequence[float], loss_mask: torch.Tensor,
             turn_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N, L) coefficient of each token: one value for every generated token, or one value per turn
    (``coefficients[t]`` on the tokens of turn t; a turn past the list takes its last value). 0 elsewhere."""
    mask = loss_mask.float()
    if isinstance(coefficients, (int, float)):
        return float(coefficients) * mask
    coefs = torch.tensor(list(coefficients), dtype=torch.float32, device=loss_mask.device)
    if coefs.numel() == 0:
        raise ValueError("per_turn: an empty list of per-turn coefficients")
    if coefs.numel() == 1:
        return coefs[0] * mask
    if turn_ids is None:
        raise ValueError("per_turn: per-turn coefficients need a batch with turn_ids")
    return coefs[turn_ids.clamp(0, coefs.numel() - 1)] * mask


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


# -- the registry ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimator:
    """A registered advantage estimator: ``fn`` and what it needs (see the module docstring)."""
    name: str
    fn: Callable
    per_token: bool = False
    value_head: bool = False
    min_group_size: int = 1

    def check_options(self, options: dict) -> None:
        """Refuse an option ``fn`` does not take (a typo would otherwise be dropped silently)."""
        params = inspect.signature(self.fn).parameters
        fixed = 3 if self.per_token else 2
        known = list(params)[fixed:]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"advantage estimator {self.name!r} takes no option {unknown}; its options: {known}")


ADVANTAGES: dict[str, Estimator] = {}


def register_advantage(*names: str, per_token: bool = False, value_head: bool = False, min_group_size: int = 1):
    """Decorator: register ``fn`` under ``names`` (``algorithm: <name>`` in a config selects it)."""
    def register(fn: Callable) -> Callable:
        for name in names:
            if name in ADVANTAGES:
                raise ValueError(f"advantage estimator {name!r} is registered twice")
            ADVANTAGES[name] = Estimator(name, fn, per_token, value_head, min_group_size)
        return fn
    return register


def get_advantage(name: str) -> Estimator:
    """The estimator registered as ``name``, or the registered function at the import path ``name``
    (``my_package.my_module.my_estimator``: its module is imported, which registers it)."""
    if name not in ADVANTAGES and "." in name:
        module, attr = name.rsplit(".", 1)
        fn = getattr(importlib.import_module(module), attr, None)
        found = [e for e in ADVANTAGES.values() if e.fn is fn and fn is not None]
        if not found:
            raise ValueError(f"advantage estimator {name!r}: {attr!r} in {module} is not decorated with "
                             "rl.advantages.register_advantage")
        return found[0]
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGES)}, or the import path "
                         "of a function decorated with rl.advantages.register_advantage")
    return ADVANTAGES[name]


register_advantage("grpo", min_group_size=2)(grpo_advantages)
register_advantage("rloo", min_group_size=2)(rloo_advantages)


@register_advantage("reinforce")
def reinforce_estimator(rewards: torch.Tensor, group_size: int, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE with a baseline (:func:`reinforce_advantages`); the group plays no part."""
    return reinforce_advantages(rewards, baseline)


@register_advantage("gae", "ppo", per_token=True, value_head=True)
def gae_estimator(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                  lam: float = 1.0, whiten_advantages: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's advantages: :func:`gae` with a value head, whitened over the batch's tokens (``whiten_advantages``)."""
    adv, returns = gae(token_rewards, values, mask, gamma, lam)
    return (whiten(adv, mask) if whiten_advantages else adv), returns
