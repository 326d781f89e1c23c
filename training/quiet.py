"""Silence the start-up noise that says nothing about the run, in one place for ``train.py`` and ``bench/``.

- bitsandbytes, on AVX512-BF16 CPUs, logs "Failed to load CPU gemm_4bit_forward from kernels-community" when
  it is imported: an optional kernel package; its own fallback kernel is the one that runs.
- Lightning advertises its cloud services ("💡 Tip: ...") on every start.
- Lightning 2.6 warns, with a 12-line code sample, whenever ``ModelCheckpoint(every_n_train_steps=...)`` meets a
  module with manual optimisation (every RL method): the checkpoint then holds the weights *after* that step's
  optimizer step. That is what we want: a checkpoint at global step N is the model after N steps, and exact
  resume (tests/test_resume.py) starts from there. The sample code it prints is for a test model of Lightning's.
- Two deprecations inside the libraries, printed by every training run, that no user can act on: torchdata's
  StatefulDataLoader calls ``torch.set_vital`` (deprecated in torch 2.13), and Lightning's ``_pytree`` checks
  ``isinstance(treespec, LeafSpec)`` (a FutureWarning of torch 2.13). Both still work. Likewise peft reads
  transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a model in LoRA (every LoRA run).

No Lightning import here: ``quiet_warnings`` must run before the imports that print (bitsandbytes logs at import).
"""

from __future__ import annotations

import logging
import warnings

MANUAL_OPTIMISATION_CHECKPOINT = "Using ModelCheckpoint with manual optimization and every_n_train_steps"
LIBRARY_DEPRECATIONS = ("'set_vital' is deprecated", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        "`is_gradient_checkpointing` is deprecated")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_warnings() -> None:
    """Install the filters above (idempotent)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=MANUAL_OPTIMISATION_CHECKPOINT)
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
