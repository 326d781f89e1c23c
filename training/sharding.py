"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for every trainable method, through Lightning's
``ModelParallelStrategy``.

Lightning's ``FSDPStrategy`` (FSDP1) refuses CPU and needs ``use_orig_params`` and summon-full-params
tricks for ``generate``; ``ModelParallelStrategy`` hands the module a device mesh and leaves the sharding
to ``configure_model``, and FSDP2 runs on CPU with gloo as on GPUs with NCCL. A module calls
:func:`shard` at the end of its ``configure_model``; it does nothing without a device mesh (single
process, DDP), so the same module trains everywhere.

Each transformer block is its own FSDP unit (its parameters are all-gathered just before the block runs
and freed after), then the root takes what is left (embeddings, heads, tied weights).
:func:`full_parameters` gathers a model's whole parameters for a rollout, so that ranks may generate
different numbers of tokens and turns without waiting on each other's collectives.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with pure data parallelism by default and the sharding options that
    :func:`shard` reads.

    Args:
        data_parallel_size: processes that shard the model (``auto``: every process of every node).
        tensor_parallel_size: 1 (tensor parallelism is not implemented by the modules).
        param_dtype / reduce_dtype: FSDP2 mixed precision (``MixedPrecisionPolicy``): the dtype parameters
            are all-gathered and computed in, and the dtype gradients are reduced in (None: the parameters').
            On CPU, bf16 is ~40x slower than fp32 on AVX2-only machines: leave them unset there.
        activation_checkpointing: recompute each block's activations in backward (memory for compute).
        reshard_after_forward: free the gathered parameters after each block's forward (ZeRO-3; False keeps
            them until backward, ZeRO-2-like).
        save_distributed_checkpoint: each rank saves its shard (a folder); False assembles one file on rank 0.
    """

    def __init__(self, data_parallel_size: int | Literal["auto"] = "auto", tensor_parallel_size: int = 1,
                 param_dtype: str | None = None, reduce_dtype: str | None = None,
                 activation_checkpointing: bool = False, reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None):
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint, process_group_backend)
        if tensor_parallel_size != 1:
            raise ValueError(f"FSDP2Strategy: tensor_parallel_size must be 1, got {tensor_parallel_size}")
        self.sharding_options = dict(param_dtype=_dtype(param_dtype, "param_dtype"),
                                     reduce_dtype=_dtype(reduce_dtype, "reduce_dtype"),
                                     activation_checkpointing=activation_checkpointing,
                                     reshard_after_forward=reshard_after_forward)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.world_size  # every process, not Lightning's "one per node"
        super().setup_environment()


def _dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"FSDP2Strategy.{field}: {name!r} is not a torch dtype (e.g. 'bfloat16', 'float32')")
    return dtype


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer: members of an ``nn.ModuleList`` whose class Hugging Face lists
    in ``_no_split_modules`` (BertLayer, LlamaDecoderLayer, Qwen2DecoderLayer...), or, for a model without
    that list, every member of its ModuleLists."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    blocks = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            blocks += [b for b in m if not names or type(b).__name__ in names]
    return blocks  # none (a value head): the root alone is one unit


def shard_model(model: nn.Module, mesh, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = None, activation_checkpointing: bool = False,
                reshard_after_forward: bool = True) -> nn.Module:
    """``fully_shard`` each transformer block, then the root; ``generate`` (if any) becomes an FSDP forward
    method so it may be called on the root like ``forward``."""
    blocks = transformer_blocks(model)
    # a model without blocks (Search-R1's value head, one Linear) has no activations worth recomputing
    if activation_checkpointing and blocks:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ValueError(f"activation_checkpointing: {type(model).__name__} has no gradient_checkpointing_enable")
        # non-reentrant: the reentrant variant runs backward outside FSDP2's hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return model


def shard(module, *models: nn.Module | None) -> bool:
    """Shard ``models`` (submodules of the LightningModule ``module``) when the strategy gave it a device mesh
    (``ModelParallelStrategy`` / :class:`FSDP2Strategy`); otherwise do nothing. Returns whether it sharded.
    Call at the end of ``configure_model``, before the optimizer is built."""
    mesh = getattr(module, "_device_mesh", None)
    if mesh is None:
        return False
    strategy = getattr(getattr(module, "_trainer", None), "strategy", None)
    options = getattr(strategy, "sharding_options", {})
    if mesh.ndim > 1:
        if mesh["tensor_parallel"].size() != 1:
            raise ValueError("shard: tensor_parallel_size > 1 is not supported (set it to 1)")
        mesh = mesh["data_parallel"]
    for model in models:
        if model is not None and not isinstance(model, FSDPModule):
            refuse_quantized(model)
            shard_model(model, mesh, **options)
    # a trainable parameter left out would never have its gradient averaged: ranks would drift apart
    missed = [n for n, p in module.named_parameters() if p.requires_grad and type(p).__name__ != "DTensor"]
    if missed:
        raise ValueError(f"shard: {type(module).__name__} has trainable parameters outside the sharded models: "
                         f"{missed[:5]}{' ...' if len(missed) > 5 else ''}; pass their modules to shard()")
    return True


def refuse_quantized(model: nn.Module) -> None:
    """A bitsandbytes 4-bit base (QLoRA) cannot be sharded here: ``fully_shard`` would cut its packed uint8
    storage into row chunks while its quantisation state (absmax, code) stays whole, and the CPU kernels
    expect the whole packed tensor. Stop before a run that would compute with broken weights."""
    quantized = [n for n, p in model.named_parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
    if quantized:
        raise ValueError(f"FSDP2: {type(model).__name__} has a bitsandbytes-quantized base ({quantized[0]}, ...), which "
                         "FSDP2 does not shard here; use load_in_4bit false (LoRA on a bf16/fp32 base) with the fsdp2 "
                         "preset, or keep the 4-bit base and drop the preset")


@contextmanager
def full_parameters(model: nn.Module):
    """Inside, ``model``'s parameters are whole on every rank and no forward runs a collective: ranks may
    generate different numbers of tokens or turns (a rollout). Memory: one full copy of the model per rank,
    as for the rollout engines of RL frameworks. A model that is not sharded is used as it is."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule) and _param_group(m) is not None]
    if not units:
        yield model
        return
    # (the root does not reshard after forward: FSDP2 decides that at its first forward)
    resharding = [_param_group(unit).post_forward_mesh_info is not None for unit in units]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit, reshard in zip(units, resharding):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)


def _param_group(unit: FSDPModule):
    return unit._get_fsdp_state()._fsdp_param_group


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of ``model`` is an FSDP2 unit."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def export_whole(module, path) -> None:
    """``module.export(path)``, called on EVERY rank after training. Unsharded (one process, DDP): rank 0
    exports the module itself. Under FSDP2 a parameter is a shard on each rank, which neither
    ``save_pretrained`` nor a merge of LoRA adapters can write: every rank all-gathers the whole state dict
    (collectives, hence every rank), and rank 0 exports a fresh unsharded module of the same class and
    hyperparameters holding it. Ranks wait for rank 0's files before returning."""
    from torch.distributed.tensor import DTensor

    from training.distributed import world

    rank, size = world()
    if not is_sharded(module):
        if rank == 0:
            module.export(path)
    else:
        state = {name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
                 for name, value in module.state_dict().items()}
        if rank == 0:
            whole = rebuild(module)
            whole.configure_model()
            whole.load_state_dict(state)
            whole.export(path)
    if size > 1:
        torch.distributed.barrier()


def rebuild(module):
    """A new ``module`` built from its saved hyperparameters. Under LightningCLI they are the parsed config, where
    settings groups (dataclasses) and ``class_path`` objects are dicts: parsed against the signature again, as
    Lightning's ``load_from_checkpoint`` does; otherwise they are the ``__init__`` arguments as given."""
    if "_instantiator" in module.hparams:
        from lightning.pytorch.cli import instantiate_module

        return instantiate_module(type(module), init_hparams(module))
    return type(module)(**init_hparams(module))


def init_hparams(module) -> dict:
    """``module``'s saved hyperparameters that its ``__init__`` takes (LightningCLI adds ``_class_path`` and
    ``_instantiator`` to them)."""
    import inspect

    params = inspect.signature(type(module).__init__).parameters
    return {k: v for k, v in module.hparams.items() if k in params}
