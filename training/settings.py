"""Settings shared by every method that loads a causal LM, grouped in one dataclass so the same idea has the
same name everywhere: ``--model.init_args.lm.name_or_path``, ``...lm.precision``, ``...lm.lora``. A method gives
its own default instance (``lm: LM = LM(dtype="bfloat16")``); a config or the command line overrides single
fields (``--model.init_args.lm.precision fp32``) and keeps the rest."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace

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


CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def save_settings(module, ignore: Sequence[str] = ("optimizer",)) -> None:
    """``module.save_hyperparameters`` for a module whose ``__init__`` (the caller) takes settings groups. Built by
    LightningCLI, its hyperparameters are the parsed config (groups as dicts, with Lightning's instantiator); built
    directly they would hold the dataclasses themselves, which ``torch.load(weights_only=True)`` (Lightning's
    default) refuses in a checkpoint: they are saved as LightningCLI saves them (a value inside a group that is
    an object, e.g. a logits processor in ``generation_kwargs``, as its repr), and ``load_from_checkpoint`` parses
    the dicts back into dataclasses. ``ignore``: arguments that are objects, not settings (optimizer, env, reward)."""
    module.save_hyperparameters(ignore=list(ignore), frame=inspect.currentframe().f_back)
    if "_instantiator" not in module.hparams:
        module.hparams.update({k: _plain(asdict(v)) for k, v in module.hparams.items()
                               if is_dataclass(v) and not isinstance(v, type)}, _instantiator=CLI_INSTANTIATOR)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def as_settings(value, cls):
    """``value`` as a ``cls`` instance of the module's own: LightningCLI hands a module's saved hyperparameters
    back as dicts (a checkpoint, an FSDP2 export rebuilding the module), the Python API passes instances, and a
    default instance is shared by every call (a copy, so changing one module's settings changes no other)."""
    if value is None:
        return None
    return replace(value) if isinstance(value, cls) else cls(**dict(value))
