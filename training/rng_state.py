"""The RNG state in checkpoints, for every trainable module: dropout masks, LoRA dropout, sampled rollouts
and anything else drawn from the global RNGs continue, on resume, the stream an uninterrupted run would have
drawn. Each module's ``on_save_checkpoint`` / ``on_load_checkpoint`` calls these two functions.

Saved as plain types (tensors, tuples, ints): Lightning loads checkpoints with ``torch.load(weights_only=True)``,
which refuses numpy arrays, so numpy's key array is stored as a tensor. The data order does not depend on these
RNGs: the training loader has its own seeded generator (datamodules.resumable).
"""

from __future__ import annotations

import random

import numpy as np
import torch

KEY = "rng"


def save_rng_state(checkpoint: dict) -> None:
    """Put torch's, Python's, numpy's and (when present) CUDA's RNG states into ``checkpoint[KEY]``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    checkpoint[KEY] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                       "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def load_rng_state(checkpoint: dict) -> None:
    """Restore the states ``save_rng_state`` saved; a checkpoint without them (older runs) leaves the RNGs alone,
    except RetRobust's former ``torch_rng`` entry, which restores torch's."""
    rng = checkpoint.get(KEY)
    if rng is None:
        if "torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng"])
        return
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
