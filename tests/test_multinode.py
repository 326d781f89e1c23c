"""Multi-node without a cluster: the FSDP2 CPU preset (configs/trainer/fsdp2_cpu.yaml) as 2 nodes x 1 process,
launched as a cluster would be, by two ``torchrun --nnodes 2 --node_rank {0,1}`` commands meeting at a static
rendezvous on 127.0.0.1 (each "node" is a process group of its own launcher). One training step of the
ContrastiveRetriever (separate encoders, negatives gathered across the nodes) must give the weights and loss of
one process holding the whole batch.

This file is also the script each torchrun runs (``python -m torch.distributed.run ... tests/test_multinode.py
<model_dir> <out_dir>``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _node_main(model_dir: str, out_dir: str) -> None:
    """One node's process: Lightning reads torchrun's variables (TorchElasticEnvironment) and joins the group."""
    import lightning as L
    import torch
    import yaml
    from torch.utils.data import DataLoader

    from training.sharding import FSDP2Strategy
    from test_fsdp2 import PAIRS, _collate, _full_weights, _retriever

    torch.set_num_threads(1)
    preset = yaml.safe_load((ROOT / "configs" / "trainer" / "fsdp2_cpu.yaml").read_text())["trainer"]
    trainer = L.Trainer(accelerator=preset["accelerator"], devices=1, num_nodes=2, precision=preset["precision"],
                        strategy=FSDP2Strategy(**preset["strategy"]["init_args"]), max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=out_dir)
    model = _retriever(model_dir)
    trainer.fit(model, DataLoader(PAIRS, batch_size=2, collate_fn=_collate))
    assert (trainer.world_size, trainer.num_nodes, trainer.node_rank) == (2, 2, int(os.environ["GROUP_RANK"]))
    weights = _full_weights(model)
    loss = trainer.callback_metrics["train/loss"].clone()
    torch.distributed.all_reduce(loss)
    if trainer.global_rank == 0:
        sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
        torch.save({"weights": weights, "loss": loss / 2, "sharded": sharded, "nparams": len(weights)},
                   os.path.join(out_dir, "result.pt"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_through_torchrun_equal_one_process(tiny_bert_dir, tmp_path, monkeypatch):
    import pytest
    import torch

    from test_fsdp2 import _assert_same_step, _configured, _full_weights, _one_process

    monkeypatch.setenv("RAGKIT_PRECISION", "fp32")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAGKIT_PRECISION": "fp32",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--rdzv_backend", "static", "--master_addr", "127.0.0.1",
                               "--master_port", str(port), __file__, tiny_bert_dir, str(tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        pytest.fail("the two torchrun nodes did not finish in 300 s (a rendezvous or collective waiting?)")
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-4000:]}"
    result = torch.load(tmp_path / "result.pt")
    initial = _full_weights(_configured(tiny_bert_dir))
    weights, loss = _one_process(tiny_bert_dir, str(tmp_path / "one"))
    _assert_same_step(result, weights, loss, initial)


if __name__ == "__main__":
    _node_main(*sys.argv[1:])
