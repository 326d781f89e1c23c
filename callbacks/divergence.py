"""Stops a diverged run: a non-finite loss or gradient ends training with an error that names the step and the
value, before the optimizer applies it, so a NaN model is never tested, checkpointed as the step's result, nor
exported (train.py's default run goes on to test and export only after fit returns)."""

from __future__ import annotations

import math

import lightning as L
import torch

ADVICE = ("try a lower learning rate (--model.init_args.optimizer.init_args.lr; {lr:g} at this step), fp32 "
          "(--trainer.precision 32-true, RAGKIT_PRECISION=fp32), or gradient clipping "
          "(--trainer.gradient_clip_val 1.0)")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 shard (DTensor)


def first_non_finite_grad(module: torch.nn.Module) -> tuple[str, float] | None:
    """(name, L2 norm) of the first parameter whose gradient holds a NaN or an infinity; None if all are finite.
    One device sync: the per-parameter norms (inf or NaN as soon as one element is) are stacked first."""
    named = [(n, _local(p.grad)) for n, p in module.named_parameters() if p.grad is not None]
    if not named:
        return None
    norms = torch._foreach_norm([g.detach() for _, g in named])
    device = norms[0].device
    finite = torch.stack([n.float().to(device) for n in norms]).isfinite()
    if bool(finite.all()):
        return None
    i = int((~finite).nonzero()[0])
    return named[i][0], float(norms[i])


class DivergenceGuard(L.Callback):
    """Raises ``RuntimeError`` at the first non-finite loss (checked before backward) or gradient (checked
    before the optimizer step; skipped under fp16 loss scaling, whose scaler skips such steps itself). The
    decision is all-reduced, so every rank stops at the same step."""

    def __init__(self):
        self._bad_loss: float | None = None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        value = float(loss.detach().float().sum())
        if not math.isfinite(value) and self._bad_loss is None:
            self._bad_loss = value

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad_grad = None
        if self._bad_loss is None and getattr(trainer.precision_plugin, "scaler", None) is None:
            bad_grad = first_non_finite_grad(pl_module)
        finite = trainer.strategy.reduce_boolean_decision(self._bad_loss is None and bad_grad is None, all=True)
        if finite:
            return
        lr = optimizer.param_groups[0]["lr"]
        if self._bad_loss is not None:
            what = f"the loss is {self._bad_loss}"
        elif bad_grad is not None:
            what = f"the gradient of {bad_grad[0]} has norm {bad_grad[1]}"
        else:
            what = "another rank's loss or gradient is not finite"
        raise RuntimeError(f"training diverged at step {trainer.global_step + 1} (epoch {trainer.current_epoch}): "
                           f"{what}; the run stops before this step is applied, and nothing is tested or exported; "
                           + ADVICE.format(lr=lr))
