"""Contriever's data augmentation (Izacard et al. 2022, section 3.2 and the authors' ``src/data.py``):
a positive pair is two independent random crops of the same document, each optionally followed by
token deletion.

- crop: ratio r ~ U[ratio_min, ratio_max]; length = max(1, int(r * n)); start ~ U{0, ..., n - length};
  the crop is tokens[start : start + length]. The paper uses r in [0.1, 0.5].
- deletion: each token is dropped independently with probability p (the paper's ablation uses 0.1).

Tokens here are whatever sequence the caller passes; :func:`words` splits a text on whitespace so the
crops remain text that any encoder's tokenizer can read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def words(text: str) -> list[str]:
    return text.split()


def random_crop(tokens: Sequence, ratio_min: float, ratio_max: float, rng: random.Random) -> list:
    """A contiguous span of ``tokens`` whose length is a uniform random fraction of the whole."""
    if not 0 < ratio_min <= ratio_max <= 1:
        raise ValueError(f"random_crop: need 0 < ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
    if not tokens:
        raise ValueError("random_crop: empty token sequence")
    ratio = rng.uniform(ratio_min, ratio_max)
    length = max(1, int(ratio * len(tokens)))
    start = rng.randint(0, len(tokens) - length)
    return list(tokens[start:start + length])


def delete_tokens(tokens: Sequence, prob: float, rng: random.Random) -> list:
    """Drop each token with probability ``prob``; if all would go, the first one is kept (an empty crop
    cannot be encoded)."""
    if not 0 <= prob < 1:
        raise ValueError(f"delete_tokens: prob must be in [0, 1), got {prob}")
    if prob == 0:
        return list(tokens)
    kept = [t for t in tokens if rng.random() >= prob]
    return kept or list(tokens[:1])


def crop_pair(tokens: Sequence, rng: random.Random, ratio_min: float = 0.1, ratio_max: float = 0.5,
              deletion_prob: float = 0.0) -> tuple[list, list]:
    """Two independent views (query, key) of one document."""
    return tuple(delete_tokens(random_crop(tokens, ratio_min, ratio_max, rng), deletion_prob, rng)
                 for _ in range(2))
