"""Per-token estimators of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman, "Approximating
KL divergence", 2020). With log-ratio  l = log pi_ref(y_t) - log pi_theta(y_t):

    k1 = -l                      unbiased, high variance, can be negative
    k2 = l^2 / 2                 biased, low variance, >= 0
    k3 = (exp(l) - 1) - l        unbiased, low variance, >= 0   (GRPO's estimator)
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


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
