"""training.sharding.shard_model's options on a one-process gloo group (the 2-process step comparisons are in
tests/test_fsdp2.py): activation checkpointing reaches the transformer, and a model without transformer blocks
(Search-R1's value head) is sharded whole without it, as configs/search_r1_qwen3b_fsdp.yaml asks (PPO, value
head, activation_checkpointing true)."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mesh():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_activation_checkpointing_reaches_the_transformer_and_spares_the_value_head(tiny_llama_dir, mesh):
    from transformers import AutoModelForCausalLM

    from rl.policy import ValueHead
    from training.sharding import shard_model

    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not policy.is_gradient_checkpointing
    shard_model(policy, mesh, activation_checkpointing=True)
    assert policy.is_gradient_checkpointing
    head = shard_model(ValueHead(32), mesh, activation_checkpointing=True)  # was: ValueError, no such method
    assert type(head.linear.weight).__name__ == "DTensor"


def test_a_transformer_that_cannot_checkpoint_is_refused(mesh):
    from training.sharding import shard_model

    class Blocks(nn.Module):
        _no_split_modules = ["Linear"]

        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    with pytest.raises(ValueError, match="activation_checkpointing: Blocks has no gradient_checkpointing_enable"):
        shard_model(Blocks(), mesh, activation_checkpointing=True)
    shard_model(Blocks(), mesh, activation_checkpointing=False)  # without the option it shards
    assert torch.distributed.get_world_size() == 1
