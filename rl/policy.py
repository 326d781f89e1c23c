"""The models of policy-gradient training besides the policy: the reference policy of the KL penalty and
PPO's value head, and :func:`load_policy_weights`: a run that starts from another run's policy (SCoRe's Stage II
from Stage I's checkpoint, a ``.ckpt`` file or the folder of an FSDP2 checkpoint).

Reference modes:
    copy          a frozen copy of the policy as RL starts (full fine-tuning; costs one more model)
    adapters_off  the LoRA policy with its adapters disabled (no second model in memory): the base model
    none          no KL term

``sync(policy)`` makes a copy-mode reference equal to the policy now (after a supervised warm start RL
starts from the warm-started policy: a KL pulling back to the pre-warm-start base would undo it). An
adapters-off reference cannot follow a warm start that trained the adapters, so ``for_policy`` chooses
``copy`` when a warm start is planned.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from generation.logprobs import dropout_off, sequence_logprobs
from generation.tokens import TokenBatch

REFERENCE_MODES = ("copy", "adapters_off", "none")


def has_adapters(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class ReferencePolicy(nn.Module):
    """log pi_ref of a batch. In ``copy`` mode the frozen model is a submodule (saved in checkpoints, moved
    with the module); in ``adapters_off`` mode the policy is passed at call time and never registered twice."""

    def __init__(self, mode: str, policy: nn.Module | None = None):
        super().__init__()
        if mode not in REFERENCE_MODES:
            raise ValueError(f"unknown reference mode {mode!r}; expected one of {REFERENCE_MODES}")
        if mode == "adapters_off" and policy is not None and not has_adapters(policy):
            raise ValueError("reference 'adapters_off' needs a policy with LoRA adapters (peft)")
        self.mode = mode
        self.model = copy.deepcopy(policy).requires_grad_(False).eval() if mode == "copy" else None

    @staticmethod
    def for_policy(policy: nn.Module, kl: bool, warm_start: bool = False) -> ReferencePolicy:
        """The cheapest reference that is right: none without KL; adapters off for a LoRA policy that is not
        warm-started; otherwise a frozen copy."""
        if not kl:
            return ReferencePolicy("none")
        if has_adapters(policy) and not warm_start:
            return ReferencePolicy("adapters_off", policy)
        return ReferencePolicy("copy", policy)

    @torch.no_grad()
    def sync(self, policy: nn.Module) -> None:
        if self.mode == "copy":
            self.model.load_state_dict(policy.state_dict())

    @torch.no_grad()
    def logprobs(self, policy: nn.Module, batch: TokenBatch, temperature: float = 1.0, micro_batch_size: int = 8,
                 start: int = 1, prefix: int = 0) -> torch.Tensor | None:
        """(N, L) log pi_ref at the sampling temperature, 0 off the loss mask; None in mode ``none``. ``prefix``:
        see generation.logprobs.sequence_logprobs (the rollouts' ``prefix``, as for the old log-probs)."""
        if self.mode == "none":
            return None
        model = self.model if self.mode == "copy" else policy
        adapters = policy.disable_adapter() if self.mode == "adapters_off" else nullcontext()
        with dropout_off(model), adapters:
            lp = sequence_logprobs(model, batch.input_ids, batch.attention_mask, temperature=temperature,
                                   micro_batch_size=micro_batch_size, start=start, prefix=prefix).logprobs
        return lp * batch.loss_mask.to(lp.device, lp.dtype)

    def train(self, mode: bool = True) -> ReferencePolicy:
        super().train(mode)
        if self.model is not None:  # the frozen copy stays in eval mode whatever Lightning asks
            self.model.eval()
        return self


class ValueHead(nn.Module):
    """V(x_<t): a linear layer on the policy's last hidden state, aligned with token t (the state in which
    the policy chose token t is the prefix before it, whose last hidden state sits at column t - 1)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L); column 0 (no prefix) gets 0."""
        v = self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)[:, :-1]
        return nn.functional.pad(v.float(), (1, 0))


# -- starting from another run's policy -------------------------------------------------------------

def read_module_state(path: str) -> dict:
    """The module state dict (whole tensors, on CPU) of a Lightning checkpoint: a ``.ckpt`` file, or the folder of a
    sharded checkpoint (FSDP2: one shard per rank, torch.distributed.checkpoint), of which only the weights are
    read (not the optimizer state)."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    if folder.is_dir():
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        if not (folder / ".metadata").is_file():
            raise ValueError(f"init_from: {path} is a folder but not a sharded checkpoint (no .metadata file)")
        return _load_state_dict_from_keys({"state_dict"}, checkpoint_id=str(folder)).get("state_dict", {})
    return torch.load(folder, map_location="cpu", weights_only=True).get("state_dict", {})


def load_policy_weights(policy: torch.nn.Module, path: str) -> None:
    """The ``policy.*`` weights of a Lightning checkpoint (Stage I's; a file or an FSDP2 folder) into ``policy``,
    strictly; ``policy`` may itself be sharded (each rank keeps its shard of the whole tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = {k[len("policy."):]: v for k, v in read_module_state(path).items() if k.startswith("policy.")}
    if not state:
        raise ValueError(f"init_from: {path} holds no policy.* weights (not a SCoRe/SearchR1 checkpoint?)")
    try:
        set_model_state_dict(policy, state, options=StateDictOptions(full_state_dict=True, strict=True))
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"init_from: {path} does not fit this policy (same model and LoRA settings?): "
                         f"{str(err)[:500]}") from None
