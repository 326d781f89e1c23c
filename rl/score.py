"""SCoRe's objective (Kumar et al., 2024, "Training Language Models to Self-Correct via Reinforcement
Learning", section 5 and appendix): per-attempt returns, per-attempt KL coefficients and per-attempt
baselines, turned into one advantage per generated token for the RL core's update (rl.update).

A rollout is two attempts, both sampled on-policy by the current policy pi_theta:

    x1 = problem,                       y1 ~ pi_theta(. | x1)
    x2 = x1 + y1 + fixed instruction,   y2 ~ pi_theta(. | x2)          (instruction tokens: no loss)

with binary rewards r(y1), r(y2) from the task's checker (rl.self_correction.task_reward).

Stage I (a good initialisation for Stage II: correct on the second attempt, first attempt kept near the base):

    max_theta  E[ r(y2) - beta2 KL(pi_theta(.|x1) || pi_ref(.|x1)) - beta1 KL(pi_theta(.|x2) || pi_ref(.|x2)) ]

Stage II (both attempts, with the shaped bonus on the second):

    max_theta  E[ sum_{i=1,2} r^(y_i) - beta1 KL(pi_theta(.|x_i) || pi_ref(.|x_i)) ],
    r^(y1) = r(y1),   r^(y2) = r(y2) + b,   b = alpha (r(y2) - r(y1))

The bonus is +alpha on a wrong -> correct flip (i->c), -alpha on correct -> wrong (c->i), 0 when the
correctness does not change: it pays for the CHANGE, so attempt 2 cannot collect it by copying attempt 1.

Policy gradient with the INSTANTANEOUS reward of each turn (discount gamma = 0): the tokens of attempt t
get attempt t's return R_t and nothing from the other attempt,

    grad J = E[ sum_t (R_t - b_t) grad log pi_theta(y_t | x_t) ] - grad (KL terms),

    Stage I:      R_1 = 0,        R_2 = r(y2)
    Stage II:     R_1 = r(y1),    R_2 = r(y2) + alpha (r(y2) - r(y1))
    single_turn:  R_1 = r(y1)     (the ablation "single-turn RL": one attempt, no second turn)

Attempt 1's task-reward term in Stage I is 0, so its advantage is 0 and its tokens move only through the
beta2 KL term: Stage I's objective has no r(y1), and with gamma = 0 the r(y2) of the second turn does not
flow back to the first either. That is the point of Stage I: attempt 1 stays at the base model's
distribution while attempt 2 learns to correct base-model first attempts; rewarding attempt 1 there (by
r(y1), or by r(y2) through gamma > 0) would teach both attempts the same answer, the collapse that Stage I
exists to avoid.

KL coefficient of each attempt's tokens (by default k1 in each attempt's return, the paper's gradient; see below):

    Stage I: [beta2, beta1]       Stage II: [beta1, beta1]       single_turn: [beta1]

Baseline b_t: RLOO per attempt (default), the mean return of attempt t over the OTHER G - 1 samples of the
same problem, A_{i,t} = R_{i,t} - 1/(G-1) sum_{j != i} R_{j,t}; or the group mean including the sample
itself (``group_mean``, Dr. GRPO without the std). Either keeps the gradient unbiased (RLOO exactly; the
group mean up to a factor (G-1)/G); the paper names REINFORCE with a baseline without saying which.

With ``kl_in_reward`` (the module's default) the KL is a penalty in each attempt's own return (REINFORCE with the
KL in the reward): R_t -= beta_t sum_{tokens of attempt t} k1(old, ref), still gamma = 0 between attempts; its
expected gradient is beta_t grad KL(pi(.|x_t) || pi_ref(.|x_t)), the paper's. Without it the KL is a loss term
(k2 for the same gradient; k3, verl's low_var_kl, gives the reverse KL's). docs/rl_kl.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rl.advantages import grpo_advantages, rloo_advantages
from rl.kl import kl_estimate

STAGES = ("I", "II", "single_turn")
BASELINES = ("rloo", "group_mean")
METRIC_NAMES = {"accuracy@t1": "acc_t1", "accuracy@t2": "acc_t2", "delta(t1,t2)": "delta",
                "delta_i->c": "delta_i2c", "delta_c->i": "delta_c2i"}


@dataclass
class Objective:
    """SCoRe's coefficients (paper, MATH: 10, 0.01, 0.1). Args:
        alpha: the shaping bonus alpha (r(y2) - r(y1)) on attempt 2 (Stage II; 0: the "no shaping" ablation).
        beta1 / beta2: KL coefficients: Stage I beta2 on attempt 1 and beta1 on attempt 2, Stage II beta1 on both.
        baseline: ``rloo`` (leave-one-out mean of the group) or ``group_mean``, per attempt.
    """
    alpha: float = 10.0
    beta1: float = 0.01
    beta2: float = 0.1
    baseline: str = "rloo"

    def __post_init__(self) -> None:
        # a negative bonus rewards making attempt 2 worse; a negative KL coefficient pushes away from the reference
        if not all(c >= 0 and c != float("inf") for c in (self.alpha, self.beta1, self.beta2)):
            raise ValueError(f"SCoRe: alpha, beta1 and beta2 must be finite and >= 0, got alpha={self.alpha}, "
                             f"beta1={self.beta1}, beta2={self.beta2}")
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; expected one of {BASELINES}")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown SCoRe stage {stage!r}; expected one of {STAGES}")
    return stage


def num_attempts(stage: str) -> int:
    """Attempts sampled in training: 1 for the single-turn ablation, else 2."""
    return 1 if check_stage(stage) == "single_turn" else 2


def turn_returns(r1: torch.Tensor, r2: torch.Tensor | None, stage: str, alpha: float = 10.0) -> torch.Tensor:
    """(N, T) return of each attempt (T = 2, or 1 for ``single_turn``) from the (N,) task rewards:

        Stage I:      [0,      r(y2)]
        Stage II:     [r(y1),  r(y2) + alpha (r(y2) - r(y1))]
        single_turn:  [r(y1)]
    """
    r1 = torch.as_tensor(r1, dtype=torch.float32)
    if check_stage(stage) == "single_turn":
        return r1[:, None]
    if r2 is None:
        raise ValueError(f"turn_returns: stage {stage} needs the second attempt's rewards")
    r2 = torch.as_tensor(r2, dtype=torch.float32)
    if r1.shape != r2.shape or r1.ndim != 1:
        raise ValueError(f"turn_returns: r(y1) {tuple(r1.shape)} and r(y2) {tuple(r2.shape)} must be the same (N,)")
    if stage == "I":
        return torch.stack([torch.zeros_like(r1), r2], dim=1)
    return torch.stack([r1, r2 + alpha * (r2 - r1)], dim=1)


def turn_kl_coefs(stage: str, beta1: float, beta2: float) -> list[float]:
    """KL coefficient of each attempt's tokens: Stage I [beta2, beta1], Stage II [beta1, beta1], single_turn [beta1]."""
    check_stage(stage)
    if stage == "I":
        return [beta2, beta1]
    if stage == "II":
        return [beta1, beta1]
    return [beta1]


def turn_advantages(returns: torch.Tensor, group_size: int, baseline: str = "rloo") -> torch.Tensor:
    """(N, T) advantages: each attempt's return minus its own baseline over the G samples of a problem
    (rows of a problem contiguous). ``rloo``: A = R - mean of the others; ``group_mean``: A = R - mean of all."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown SCoRe baseline {baseline!r}; expected one of {BASELINES}")
    if returns.ndim != 2:
        raise ValueError(f"turn_advantages: returns must be (N, T), got {tuple(returns.shape)}")
    cols = []
    for t in range(returns.shape[1]):
        if baseline == "rloo":
            cols.append(rloo_advantages(returns[:, t], group_size))
        else:
            cols.append(grpo_advantages(returns[:, t], group_size, normalize_std=False))
    return torch.stack(cols, dim=1)


def token_values(per_turn_values: torch.Tensor, loss_mask: torch.Tensor, turn_ids: torch.Tensor) -> torch.Tensor:
    """(N, L): row i's value for turn t on each generated token of turn t, 0 elsewhere (prompt, instruction,
    padding). ``per_turn_values`` is (N, T); a token of a turn t >= T is refused."""
    if turn_ids is None:
        raise ValueError("token_values: the rollout has no turn_ids (rl.rollout sets them)")
    if per_turn_values.ndim != 2 or per_turn_values.shape[0] != loss_mask.shape[0]:
        raise ValueError(f"token_values: per-turn values {tuple(per_turn_values.shape)} for {loss_mask.shape[0]} rows")
    mask = loss_mask.bool() & (turn_ids >= 0)
    if bool((turn_ids[mask] >= per_turn_values.shape[1]).any()):
        raise ValueError(f"token_values: a generated token of turn {int(turn_ids[mask].max())} but only "
                         f"{per_turn_values.shape[1]} turns have values")
    v = per_turn_values.to(loss_mask.device, torch.float32)
    return torch.where(mask, v.gather(1, turn_ids.clamp(min=0)), torch.zeros((), device=v.device))


def turn_sums(token_values_: torch.Tensor, loss_mask: torch.Tensor, turn_ids: torch.Tensor,
              num_turns: int) -> torch.Tensor:
    """(N, T) sum over each turn's generated tokens of an (N, L) per-token quantity."""
    mask = loss_mask.bool() & (turn_ids >= 0)
    return torch.stack([(token_values_ * (mask & (turn_ids == t))).sum(dim=1) for t in range(num_turns)], dim=1)


def turn_means(token_values_: torch.Tensor, loss_mask: torch.Tensor, turn_ids: torch.Tensor,
               num_turns: int) -> torch.Tensor:
    """(T,) mean over all generated tokens of turn t, batch-wide (nan for a turn without any token)."""
    mask = loss_mask.bool() & (turn_ids >= 0)
    out = []
    for t in range(num_turns):
        m = mask & (turn_ids == t)
        out.append(token_values_[m].float().mean() if bool(m.any()) else torch.tensor(float("nan")))
    return torch.stack(out)


def turn_kl_penalty(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor,
                    turn_ids: torch.Tensor, coefs: Sequence[float], estimator: str = "k1") -> torch.Tensor:
    """(N, T) KL penalty of each attempt for the KL-in-reward variant: beta_t * sum over the tokens of attempt
    t of the per-token estimate (rl.kl) of KL(pi_old || pi_ref) on the sampled tokens."""
    coefs = list(coefs)
    kl = kl_estimate(old_logprobs.float(), ref_logprobs.float(), estimator)
    sums = turn_sums(kl, loss_mask, turn_ids, len(coefs))
    return sums * torch.tensor(coefs, dtype=sums.dtype, device=sums.device)[None]


def attempt_rewards(reward_fn, turn_texts: Sequence[Sequence[str]], examples: Sequence[dict],
                    attempts: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(r(y1), r(y2)) as (N,) float tensors from a rollout's per-turn texts, one reward call per attempt
    (``r(y2)`` None when ``attempts`` is 1). The attempts are read as the evaluation reads them
    (rl.self_correction.attempt_texts): a row whose budget ran out on attempt 1 has attempt 2 = "", graded."""
    from rl.self_correction import attempt_texts

    if len(turn_texts) != len(examples):
        raise ValueError(f"attempt_rewards: {len(turn_texts)} rollouts but {len(examples)} examples")
    first, second = attempt_texts(turn_texts)
    r1 = torch.tensor(reward_fn(first, list(examples)), dtype=torch.float32)
    if attempts == 1:
        return r1, None
    return r1, torch.tensor(reward_fn(second, list(examples)), dtype=torch.float32)


def edit_distance_ratio(first: Sequence[str], second: Sequence[str]) -> list[float]:
    """Character Levenshtein distance between each row's attempts over the longer one's length (rapidfuzz's
    normalized distance): 0 when attempt 2 copies attempt 1, 1 when nothing is kept. The paper watches it for
    the collapse in which the second attempt stops changing the first."""
    from rapidfuzz.distance import Levenshtein

    if len(first) != len(second):
        raise ValueError(f"edit_distance_ratio: {len(first)} first attempts but {len(second)} second attempts")
    return [Levenshtein.normalized_distance(a, b) for a, b in zip(first, second)]


def selection_reward(recent: torch.Tensor) -> torch.Tensor:
    """Checkpoint selection by training reward: the mean of the final attempt's training accuracy over the last
    ``len(recent)`` steps (oldest first, NaN for steps before the run's first), steps before the first counted as
    0. A checkpoint from the first few steps cannot win on a handful of lucky samples (with a plain mean over
    the steps so far, step 1's 8 samples competed with step 10's 80)."""
    return recent.nan_to_num(0.0).mean()


def pair_text(turns: Sequence[str], r1: float, r2: float | None) -> str:
    """One sampled (attempt 1, attempt 2) pair as Markdown for TensorBoard's text tab (training.records.code_block)."""
    from rl.self_correction import attempt_texts
    from training.records import code_block

    first, second = attempt_texts([turns])
    return (f"**r1 {r1:.0f}, r2 {r2 if r2 is None else format(r2, '.0f')}**\n\n"
            f"attempt 1:\n\n{code_block(first[0])}\n\nattempt 2:\n\n{code_block(second[0])}")


def attempt_logs(prefix: str, first: Sequence[str], second: Sequence[str], metrics: dict) -> dict:
    """The two-attempt metrics (rl.self_correction.attempt_metrics) under their short names, and the mean edit
    distance between the attempts."""
    logs = {f"{prefix}/{METRIC_NAMES[k]}": v for k, v in metrics.items() if k in METRIC_NAMES}
    logs[f"{prefix}/edit_distance"] = sum(edit_distance_ratio(first, second)) / len(first)
    return logs
