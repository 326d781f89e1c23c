"""Settings shared by every method that loads a causal LM, grouped in one dataclass so the same idea has the
same name everywhere: ``--model.init_args.lm.name_or_path``, ``...lm.precision``, ``...lm.lora``. A method gives
its own default instance (``lm: LM = LM(dtype="bfloat16")``); a config or the command line overrides single
fields (``--model.init_args.lm.precision fp32``) and keeps the rest."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from training.models import DEFAULT_GENERATOR
from training.precision import PRECISIONS


@dataclass
class LM:
    """A causal LM, loaded by ``training.models.load_causal_lm``.

    Args:
        name_or_path: a local folder, a hub name (needs the network), or ``smollm2-135m-instruct``.
        dtype: the weights' dtype (``float32`` on CPU; ``bfloat16`` on a GPU).
        precision: the compute precision (``auto``, ``fp32``, ``bf16``; None: ``$RAGKIT_PRECISION``), see
            ``training.precision.set_precision``; weights stay in ``dtype``.
        lora: peft LoRA settings ``{r, alpha, dropout, target_modules}`` (None: train every weight).
        load_in_4bit: QLoRA's nf4 base (bitsandbytes); needs ``lora``.
        gradient_checkpointing: recompute activations in the backward pass (memory for time).
    """
    name_or_path: str = DEFAULT_GENERATOR
    dtype: str = "float32"
    precision: str | None = None
    lora: dict | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"lm.precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.load_in_4bit and self.lora is None:
            raise ValueError("lm.load_in_4bit needs lm.lora: a 4-bit base cannot be trained directly")

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``load_causal_lm`` (all but ``name_or_path`` and ``gradient_checkpointing``)."""
        kwargs = asdict(self)
        del kwargs["name_or_path"], kwargs["gradient_checkpointing"]
        return kwargs


def plain_settings(hparams) -> None:
    """Turn the settings groups in a module's ``hparams`` into plain dicts, as LightningCLI stores them: a
    module built in Python (a test, a bench script) would otherwise write its dataclasses into checkpoints,
    which ``torch.load(weights_only=True)`` (Lightning's resume) refuses to read."""
    from dataclasses import is_dataclass

    for key, value in list(hparams.items()):
        if is_dataclass(value) and not isinstance(value, type):
            hparams[key] = asdict(value)


def as_settings(cls, value):
    """``value`` as a ``cls`` settings group: a module rebuilt from its saved hyperparameters (the unsharded copy
    that ``training.sharding.export_whole`` exports, a checkpoint's ``load_from_checkpoint``) gets the groups
    back as dicts."""
    return cls(**value) if isinstance(value, dict) else value
