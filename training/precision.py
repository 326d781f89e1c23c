"""One compute-precision rule for every model of the project (encoders and LMs): ``auto`` / ``fp32`` / ``bf16``,
from a module option or ``$RAGKIT_PRECISION``. bf16 autocast only where the CPU multiplies bf16 natively;
on a GPU the trainer's precision applies. Weights stay fp32 either way."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PRECISION_ENV = "RAGKIT_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there bf16 is about 2x faster
    than fp32 (123 vs 57 GFLOP/s measured on an AMD EPYC), while on AVX2-only CPUs it is about 40x slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the kernel's flags
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device | str, what: str = "encoder") -> str:
    """``"bf16"`` or ``"fp32"``: the compute precision of an encoder (or of the LM, ``what="LM"``: the same
    rule, see ``training.precision.lm_autocast``) on ``device``.

    ``precision``: ``"fp32"``, ``"bf16"``, ``"auto"``, or None for ``$RAGKIT_PRECISION`` (default ``auto``).
    ``auto`` is bf16 autocast on a CPU that has native bf16 (:func:`cpu_has_fast_bf16`) and fp32 elsewhere:
    on a GPU the trainer's ``precision`` (or the caller's autocast) decides, as before."""
    source = "argument"
    if precision is None:
        precision, source = os.environ.get(PRECISION_ENV) or "auto", PRECISION_ENV
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} (from {source}): expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
        reason = (f"{'native bf16 (AVX512-BF16/AMX)' if precision == 'bf16' else 'no native bf16'} on this CPU"
                  if device.type == "cpu" else f"{device.type}: the trainer's precision applies")
        _log_once(f"{what} precision: {precision} ({reason}; set {PRECISION_ENV}=fp32|bf16 to override)")
    return precision


def precision_autocast(precision: str | None, device: torch.device | str, what: str = "encoder"):
    """bf16 autocast where :func:`resolve_precision` says so; otherwise no context of its own, so an
    autocast the caller (the trainer) opened stays in force. Weights stay fp32 either way."""
    device = torch.device(device)
    if resolve_precision(precision, device, what) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


PRECISION_ATTR = "ragkit_precision"


def set_precision(model, precision: str | None):
    """Attach the compute precision (``"auto"``, ``"fp32"``, ``"bf16"``, None for ``$RAGKIT_PRECISION``) to
    ``model``: every forward of the LM core (generation, rollouts, log-probs, scoring, the supervised loss)
    runs under :func:`lm_autocast` of the model it is given. Kept on the model rather than passed to each
    call, so RL's old, new and reference log-probs (the reference a copy of the policy, or the policy with
    its adapters off) can only come from one precision, and the first on-policy ratio stays exactly 1."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"LM precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    setattr(model, PRECISION_ATTR, precision)
    return model


def lm_precision(model) -> str:
    """``"bf16"`` or ``"fp32"``: the precision :func:`lm_autocast` computes ``model`` in, where it is now."""
    return resolve_precision(getattr(model, PRECISION_ATTR, None), next(model.parameters()).device, "LM")


def lm_autocast(model):
    """The LM's compute context: bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX) under ``auto``,
    or when ``bf16`` is forced; otherwise none of its own (fp32 on AVX2-only CPUs; on a GPU the trainer's
    precision applies). The same rule and log line as the encoders (``training.precision.resolve_precision``)."""
    return precision_autocast(getattr(model, PRECISION_ATTR, None), next(model.parameters()).device, "LM")
