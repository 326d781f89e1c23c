"""The one training loader of every DataModule: resumable mid-epoch and at an epoch boundary.

``train_loader`` builds torchdata's ``StatefulDataLoader`` (Lightning saves its ``state_dict`` with the loops'
state in the checkpoint and loads it on resume) over an ``EpochSampler``:

- the order of epoch e is ``randperm`` seeded with ``seed + e`` (Lightning calls ``set_epoch``), this rank's
  slice of it; the sampler's state is the epoch and how many of its indices were consumed, so a run resumed
  mid-epoch continues with the next batch, and one resumed at an epoch boundary starts the next epoch's
  order instead of replaying the last one;
- a dataset with ``state_dict``/``load_state_dict`` (ContrastivePairs, CropPairs: the draw counters that seed
  each item's negatives / crops) is saved and restored with the loader;
- the loader has its own ``torch.Generator``: a plain DataLoader draws a seed from the global torch RNG at
  every ``iter``, which would shift the dropout / sampling stream that the modules checkpoint
  (training.rng_state) by one draw on resume.

Checkpoints this makes exact: those written after a training step (``ModelCheckpoint(every_n_train_steps=N)``,
``save_last``), mid-epoch or at the epoch's last batch. Lightning 2.6 itself resumes a checkpoint written in
``on_train_epoch_end`` (ModelCheckpoint's default trigger, also taken when ``max_steps`` stops a run) with
a short first epoch, whatever the loader.

Workers: a dataset that keeps state is refused with ``num_workers > 0``: each worker would count draws in its
own copy of the dataset, so the negatives would depend on the number of workers and could not be restored as
one state. Datasets without state (lists of rows) may use workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchdata.stateful_dataloader.stateful import Stateful


class DrawCounters:
    """A dataset whose item i is drawn at random anew on every fetch (negatives, crops) with an RNG seeded by
    (seed, i, how many times item i was drawn before): reproducible, different from one epoch to the next. The
    counters are its state, checkpointed with the training loader, so a resumed run draws what an
    uninterrupted one would."""

    def init_draws(self, n: int, seed: int) -> None:
        self.seed, self.draws = seed, [0] * n

    def draw_rng(self, i: int) -> random.Random:
        """The RNG of item i's next draw (counts the draw)."""
        rng = random.Random(f"{self.seed}-{i}-{self.draws[i]}")
        self.draws[i] += 1
        return rng

    def state_dict(self) -> dict:
        return {"draws": torch.tensor(self.draws, dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["draws"]) != len(self.draws):
            raise ValueError(f"{type(self).__name__} checkpoint: {len(state['draws'])} draw counters for "
                             f"{len(self.draws)} items; was it saved with the same training data?")
        self.draws = state["draws"].tolist()


class EpochSampler(StatefulDistributedSampler):
    """``StatefulDistributedSampler`` (epoch e's order: ``randperm`` seeded with seed + e; its state: how many
    indices of the epoch were consumed) whose state also names the epoch, and whose saved position applies only
    to that epoch's order. Lightning calls ``set_epoch`` after ``iter`` (the order is drawn at the first
    ``next``): a run resumed into the next epoch (a checkpoint after an epoch's last batch) starts that epoch
    from its beginning, not from the finished epoch's position."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved_epoch: int | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.saved_epoch = state.get("epoch")

    def __iter__(self):
        if self.saved_epoch is not None and self.saved_epoch != self.epoch:
            self.next_yielded = None
        self.saved_epoch = None
        yield from super().__iter__()


def train_loader(dataset, batch_size: int, seed: int, trainer=None, *, drop_last: bool = False,
                 collate_fn: Callable | None = None, num_workers: int = 0) -> StatefulDataLoader:
    """A shuffled, resumable training loader: epoch e's order is a function of (seed, e), split across the
    trainer's ranks (``trainer`` None: one process)."""
    if num_workers > 0 and isinstance(dataset, Stateful):
        raise ValueError(f"{type(dataset).__name__} keeps draw counters (its negatives / crops depend on how often "
                         f"each item was fetched), which DataLoader workers would each count in their own copy: "
                         f"set data.init_args.num_workers 0 (got {num_workers})")
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                              collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0,
                              generator=torch.Generator().manual_seed(seed))
