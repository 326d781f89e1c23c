"""Optimizers and learning-rate schedules: the default AdamW, BERT's weight-decay groups, linear warm-up then
decay, and the number of optimizer steps a schedule spans, counted without breaking exact resume."""

from __future__ import annotations

import math

import torch


def planned_steps(trainer) -> int:
    """``trainer.estimated_stepping_batches``: ``max_steps``, or ceil(batches per epoch / accumulation) x
    ``max_epochs`` (the smaller of the two when both are set).

    With ``max_epochs`` set, Lightning builds the training loader to count its batches, and keeps it. Called
    from ``configure_optimizers`` that happens before Lightning restores a checkpoint's loop state, and the
    loader it keeps never gets the saved loader state: a resumed run re-reads the interrupted epoch from its
    start, skips its end, and restarts the negatives' / crops' draw counters (datamodules.resumable). The
    loader built for counting is dropped here (nothing was fetched from it), so fit builds it again once the
    state is restored."""
    loop = trainer.fit_loop
    built_here = loop._combined_loader is None
    total = trainer.estimated_stepping_batches
    if built_here and loop._combined_loader is not None:
        if loop._data_fetcher is not None:
            loop._data_fetcher.teardown()
            loop._data_fetcher = None
        loop._combined_loader = None
    return int(total) if total != float("inf") else total


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


def decay_groups(module: torch.nn.Module, weight_decay: float | None = None) -> list[dict]:
    """Parameter groups without weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    return groups


def warmup_then_decay(module: torch.nn.Module, optimizer_factory, warmup: float, params=None,
                      round_up: bool = False) -> dict:
    """Lightning's optimizer config: ``optimizer_factory`` on ``params`` (None: :func:`decay_groups` of
    ``module``), the learning rate warmed up linearly over ``warmup`` (a fraction of the T training steps if
    < 1, else a number of steps), then decayed linearly to 0:

        lr_t = lr t / w  for t < w,   lr (T - t) / (T - w)  after,   w = floor(warmup T) (ceil with ``round_up``)
    """
    optimizer = optimizer_factory(decay_groups(module) if params is None else params)
    total = planned_steps(module.trainer)
    if warmup >= 1:
        warmup_steps = int(warmup)
    else:
        warmup_steps = math.ceil(warmup * total) if round_up else int(warmup * total)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
