"""Per-token estimators of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman, "Approximating
KL divergence", 2020). With log-ratio  l = log pi_ref(y_t) - log pi_theta(y_t):

    k1 = -l                      unbiased, high variance, can be negative
    k2 = l^2 / 2                 biased, low variance, >= 0
    k3 = (exp(l) - 1) - l        unbiased, low variance, >= 0   (GRPO's estimator)

As VALUES all three estimate KL(pi_theta || pi_ref); as a penalty their GRADIENTS differ (METHODS.md 3.2a,
docs/rl_kl.md): k1 in the reward (no gradient through the penalty) and k2 as a loss term both give
beta grad KL(pi_theta || pi_ref), the papers' regulariser; k3 as a loss term (verl's "low_var_kl") gives
beta grad KL(pi_ref || pi_theta), the reverse one; k1 as a loss term gives 0. :func:`default_estimator` picks
one with the papers' gradient for either place.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


def default_estimator(kl_in_reward: bool) -> str:
    """The estimator whose gradient is beta grad KL(pi_theta || pi_ref) where the KL goes: k1 in the reward, k2 as a
    loss term (k3 as a loss term would be the reverse KL's gradient)."""
    return "k1" if kl_in_reward else "k2"


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3",
                clamp: float | None = 20.0) -> torch.Tensor:
    """Elementwise KL estimate (same shape as the inputs). ``clamp`` bounds the log-ratio before exp
    (k3) so that one extreme token cannot overflow."""
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        if clamp is not None:
            log_ratio = log_ratio.clamp(-clamp, clamp)
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {ESTIMATORS}")
