"""Stopping generation on strings: the one rule for every generator (``generation.generate`` for RAG, HyDE,
LameR, recitation and the NLI judge; ``rl.rollout`` for multi-turn rollouts; the REPLUG ensemble's own
decoding loop): a row stops once the text it generated in this call contains a stop string. The prompt is
never searched (its few-shot examples may hold the stop string), and the stop string stays in the text."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria


def has_stop(text: str, stops: Sequence[str]) -> bool:
    return any(s in text for s in stops)


class StopOnStrings(StoppingCriteria):
    """Per-sequence stop when the text generated in this call contains one of ``stops`` (checked on the
    last ``window`` generated tokens only, never on the prompt, whose example may hold ``</answer>``).
    transformers' own ``stop_strings`` builds a vocabulary-sized table at every ``generate`` call (~0.7 s
    here) and also matches a stop string that begins in the prompt; decoding a few tokens per step is cheaper
    at these batch sizes."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int, window: int = 12):
        self.tokenizer, self.stops, self.start, self.window = tokenizer, tuple(stops), prompt_length, window

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        lo = max(self.start, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, lo:], skip_special_tokens=False)
        return torch.tensor([has_stop(t, self.stops) for t in tails], device=input_ids.device)
