"""Cross-device negatives with 2 CPU processes (gloo): the loss and the DDP-averaged parameter gradients
equal those of one process holding the whole batch, without and with GradCache."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.distributed import gather_with_grad, global_exclude, global_scores
from retrieval.encoders import Encoder
from retrieval.gradcache import grad_cache
from retrieval.losses import contrastive_loss, similarity

QUERIES = ["what is a cell", "protein folding", "vitamin d and bones", "gene expression in mice"]
POS_IDS = ["p0", "p1", "p2", "p3"]
NEG_IDS = ["n0", "n1", "n2", "p0"]      # rank 1's second hard negative is query 0's positive (rank 0)
TEXTS = {"p0": "cells are the units of life", "p1": "proteins fold into shapes", "p2": "vitamin d strengthens bones",
         "p3": "mice genes are expressed", "n0": "stars are hot", "n1": "the stock market fell", "n2": "rain in spain"}
TAU = 0.05



@pytest.fixture(autouse=True)
def fp32_encoders(monkeypatch):
    # exactness checks: bf16 autocast (chosen on CPUs with native bf16) differs between batch layouts by ~1%
    monkeypatch.setenv("RAGKIT_PRECISION", "fp32")

def _worker(rank, world, init_file, model_dir, out_dir):
    torch.set_num_threads(1)                                          # 2 processes share the cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        enc = Encoder(model_dir, "mean", normalize=True, max_length=16).eval()
        half = slice(2 * rank, 2 * rank + 2)
        passage_ids = POS_IDS[half] + NEG_IDS[half]                   # [positives | hard negatives] per rank
        q_in = dict(enc.tokenize(QUERIES[half]))
        p_in = dict(enc.tokenize([TEXTS[d] for d in passage_ids]))
        local_exclude = torch.tensor([[j != i and d == POS_IDS[half][i] for j, d in enumerate(passage_ids)]
                                      for i in range(2)])

        def loss_fn(q, p):
            scores, targets, offset = global_scores(q, p, gather=True)
            exclude = global_exclude(local_exclude, passage_ids, scores.shape[1], offset)
            return contrastive_loss(scores, targets, TAU, exclude)

        out = {}
        for mode in ("plain", "gradcache"):
            enc.zero_grad()
            if mode == "plain":
                loss = loss_fn(enc(**q_in), enc(**p_in))
                loss.backward()
            else:
                loss = grad_cache([(lambda x: enc(**x), q_in), (lambda x: enc(**x), p_in)], loss_fn, chunk_size=1).loss
            grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
            for g in [loss, *grads.values()]:                         # what DDP does: average over ranks
                dist.all_reduce(g)
                g /= world
            out[mode] = {"loss": loss.detach(), "grads": grads}
        gathered, offset = gather_with_grad(torch.full((rank + 1, 2), float(rank)))   # unequal sizes
        out["gather"] = (gathered, offset)
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_loss_and_gradients_equal_one_process(tiny_bert_dir, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tiny_bert_dir, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt")
    # one process, the whole batch, DPR layout [all positives | all negatives]
    enc = Encoder(tiny_bert_dir, "mean", normalize=True, max_length=16).eval()
    passage_ids = POS_IDS + NEG_IDS
    exclude = torch.tensor([[j != i and d == POS_IDS[i] for j, d in enumerate(passage_ids)] for i in range(4)])
    assert exclude[0, 7] and exclude.sum() == 1
    q = enc(**enc.tokenize(QUERIES))
    p = enc(**enc.tokenize([TEXTS[d] for d in passage_ids]))
    loss = contrastive_loss(similarity(q, p), torch.arange(4), TAU, exclude)
    loss.backward()
    reference = {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}
    for mode in ("plain", "gradcache"):
        assert torch.allclose(result[mode]["loss"], loss.detach(), atol=1e-5), mode
        assert result[mode]["grads"].keys() == reference.keys()
        for name, g in reference.items():
            assert torch.allclose(result[mode]["grads"][name], g, atol=1e-6, rtol=1e-3), (mode, name)
    gathered, offset = result["gather"]
    assert offset == 0 and gathered.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]


@pytest.mark.slow
@pytest.mark.distributed
def test_lightning_ddp_two_cpu_processes_moco_gradcache_gather(tiny_bert_dir, tiny_beir_dir):
    """The module end to end under Lightning DDP (2 CPU processes, gloo): cross-device negatives, GradCache
    with no_sync, and a MoCo queue fed with the keys of both ranks."""
    import lightning as L

    from datamodules import CropPairsDataModule
    from lightning_modules import ContrastiveRetriever

    from retrieval.settings import EncoderSettings, GradCacheSettings, Negatives

    model = ContrastiveRetriever(EncoderSettings(tiny_bert_dir, passage_max_length=16, query_max_length=16),
                                 negatives=Negatives(gather=True, queue_size=16, queue_in_batch=True),
                                 gradcache=GradCacheSettings(chunk_size=1))
    # built here too: ddp_spawn loads rank 0's state into this process's module non-strictly, which would skip
    # encoders and MoCo buffers that only the workers built
    model.configure_model()
    dm = CropPairsDataModule(str(tiny_beir_dir), batch_size=2, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, dm)
    # ddp_spawn hands back rank 0's weights and buffers (not the loop counters)
    assert model.moco_queue_len.item() == 8           # 2 steps x 2 ranks x 2 keys
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
