"""Extending the RL methods with one new file and a config (docs/extending.md; tests/test_rl_extension.py):
a reward, an environment and an advantage estimator. Each is named in a config by its import path; no existing
module changes."""

import torch

from rl.advantages import register_advantage
from rl.envs import Environment, Reply


class ShortAnswer:
    """A reward: 1 for a response of at most ``max_words`` words, else 0.
    Config: ``reward: {class_path: extension_examples.toy_rl.ShortAnswer, init_args: {max_words: 3}}``."""

    def __init__(self, max_words: int = 3):
        self.max_words = max_words

    def __call__(self, responses: list[str], examples: list[dict]) -> list[float]:
        return [float(len(r.split()) <= self.max_words) for r in responses]


class HintEnv(Environment):
    """An environment: after the first turn a fixed hint is appended (not trained on) and the policy writes a
    second turn. Config: ``env: {class_path: extension_examples.toy_rl.HintEnv, init_args: {hint: "Again:"}}``."""

    max_turns = 2

    def __init__(self, hint: str = "\nAre you sure? Answer again:\n"):
        self.hint = hint

    def step(self, turns):
        return [Reply(append=self.hint, done=False) if t.turn == 0 else Reply(done=True) for t in turns]


@register_advantage("toy_scaled_mean")
def scaled_mean(rewards: torch.Tensor, group_size: int, scale: float = 1.0) -> torch.Tensor:
    """An advantage estimator: A_i = scale * (r_i - mean of the rewards of its group).
    Config: ``algorithm: extension_examples.toy_rl.scaled_mean`` and ``advantage_options: {scale: 2.0}``."""
    groups = rewards.view(-1, group_size)
    return (scale * (groups - groups.mean(dim=1, keepdim=True))).view(-1)
