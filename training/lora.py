"""LoRA through peft, for every model that trains adapters: causal LMs (RetRobust, Search-R1, SCoRe)
and retrieval encoders (ContrastiveRetriever), with QLoRA preparation of a 4-bit base and the
merge used for export.

    W x + (alpha / r) B A x        only A (r x d_in) and B (d_out x r) are trained, B starts at 0
"""

from __future__ import annotations

import copy

from torch import nn


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.05,
               target_modules: list[str] | str | None = None, task_type: str | None = None, quantized: bool = False,
               bias: str = "none"):
    """``model`` wrapped with LoRA adapters (a peft ``PeftModel`` whose only trainable parameters are A, B).

    Args:
        target_modules: module names, ``"all-linear"``, or None: every linear layer of the decoder blocks
            (``"all-linear"``) for a causal LM, peft's default for the architecture for an encoder (BERT: query,
            value).
        task_type: peft's task (``"CAUSAL_LM"`` for an LM, None for a bare encoder).
        quantized: the base is 4-bit (QLoRA): prepare it for k-bit training first (norms in fp32, input
            gradients on, so gradient checkpointing can flow through the frozen base).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if r < 1:
        raise ValueError(f"apply_lora: the rank r must be >= 1, got {r}")
    if target_modules is None and task_type == "CAUSAL_LM":
        target_modules = "all-linear"
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias=bias,
                        task_type=task_type)
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """A plain model (no peft wrapper) with W + (alpha / r) B A folded into each adapted weight; the
    given model is left as it is (its adapters keep training)."""
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"merged: {type(model).__name__} has no LoRA adapters (not a peft model)")
    return copy.deepcopy(model).merge_and_unload()


def merged_unquantised(model: nn.Module, fresh: nn.Module) -> nn.Module:
    """A plain model: the adapters of ``model`` (a peft model on a 4-bit base) merged into ``fresh``, the same
    LoRA settings on an unquantised copy of the base (merging into the NF4 weights would round W + (alpha / r)
    B A to 4 bits). ``fresh`` is merged in place; ``model`` keeps its adapters."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    set_peft_model_state_dict(fresh, {k: v.cpu() for k, v in get_peft_model_state_dict(model).items()})
    return fresh.merge_and_unload()  # a fresh copy: merging in place is fine
