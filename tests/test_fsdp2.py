"""FSDP2 (lightning_modules.sharding.FSDP2Strategy) with 2 CPU processes (gloo): one training step of each
sharded method gives the loss and the updated weights of one process holding the whole batch, and a
sharded checkpoint resumes.

The processes are started with torch.multiprocessing and the environment variables a launcher (torchrun,
SLURM) sets, so Lightning joins them instead of re-running pytest in subprocesses."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

PAIRS = [("what is a cell", "cells are the units of life"), ("protein folding", "proteins fold into shapes"),
         ("vitamin d and bones", "vitamin d strengthens bones"), ("gene expression in mice", "mice genes are expressed")]


@pytest.fixture(autouse=True)
def fp32_encoders(monkeypatch):
    # bf16 autocast (chosen on CPUs with native bf16) would differ between batch layouts by ~1%
    monkeypatch.setenv("RAGKIT_PRECISION", "fp32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collate(rows):
    return {"queries": [q for q, _ in rows], "passages": [p for _, p in rows]}


def sgd(params):
    # SGD, not Adam: Adam's first step is ~lr * sign(g) and would hide a wrong gradient scale
    return torch.optim.SGD(params, lr=0.5)


def _retriever(model_dir, **kw):
    from lightning_modules import ContrastiveRetriever

    return ContrastiveRetriever(model_dir, shared_encoder=False, similarity="dot", temperature=1.0, optimizer=sgd,
                                warmup=0, query_max_length=16, passage_max_length=16, gather_negatives=True, **kw)


def _trainer(devices, strategy, root, **kw):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, default_root_dir=root, **kw)


def _full_weights(model) -> dict[str, torch.Tensor]:
    """Every parameter whole (a DTensor shard is all-gathered), on CPU."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for n, p in model.named_parameters()}


def _retriever_worker(rank, world, port, model_dir, out_dir, kw, steps, ckpt_dir, strategy="fsdp2"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_modules.sharding import FSDP2Strategy

    model = _retriever(model_dir, **kw)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)] if ckpt_dir else []
    trainer = _trainer(2, FSDP2Strategy() if strategy == "fsdp2" else strategy, out_dir, max_steps=steps,
                       callbacks=callbacks,
                       enable_checkpointing=bool(ckpt_dir))
    trainer.fit(model, DataLoader(PAIRS, batch_size=2, collate_fn=_collate))
    weights = _full_weights(model)
    # each rank logs the loss of its own queries (against every rank's passages): the batch loss is the mean
    loss = trainer.callback_metrics["train/loss"].clone()
    torch.distributed.all_reduce(loss)
    sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    others = [None] * world
    torch.distributed.all_gather_object(others, weights)
    if rank == 0:
        result = {"weights": weights, "loss": loss / world, "rank1_weights": others[1]}
        if strategy == "fsdp2":
            result.update(sharded=sharded, nparams=len(weights))
        torch.save(result, os.path.join(out_dir, "result.pt"))


def _spawn(worker, *args):
    mp.spawn(worker, args=(2, _free_port(), *args), nprocs=2, join=True)


def _one_process(model_dir, root, steps=1, **kw):
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = _retriever(model_dir, **kw)
    trainer = _trainer(1, "auto", root, max_steps=steps, enable_checkpointing=False)
    trainer.fit(model, DataLoader(PAIRS, batch_size=4, collate_fn=_collate))
    return _full_weights(model), trainer.callback_metrics["train/loss"]


def _assert_same_step(result, weights, loss, initial):
    if "sharded" in result:
        assert result["sharded"] == result["nparams"] > 0      # every parameter was a DTensor shard
    assert result["weights"].keys() == weights.keys()
    assert torch.allclose(result["loss"], loss, atol=1e-5), (result["loss"], loss)
    # the updates agree, not only the weights (an update is ~1e-3 of a weight): to 0.1% of each tensor's
    # update, plus a floor for tensors whose exact gradient is ~0 (e.g. the passage encoder's last biases: the
    # softmax-CE gradients of all passages sum to zero) and is float noise in both runs
    updates = {n: w - initial[n] for n, w in weights.items()}
    floor = 1e-5 * max(u.abs().max().item() for u in updates.values())
    errors = {n: ((result["weights"][n] - initial[n] - u).abs().max().item(), u.abs().max().item())
              for n, u in updates.items()}
    assert sum(size > 0 for _, size in errors.values()) > len(weights) // 2   # the step changed the weights
    bad = {n: e for n, e in errors.items() if e[0] > 1e-3 * e[1] + floor}
    assert not bad, (floor, bad)


@pytest.mark.parametrize("gradcache", [None, pytest.param(1, marks=pytest.mark.slow)])
def test_contrastive_retriever_fsdp2_step_equals_one_process(tiny_bert_dir, tmp_path, gradcache):
    """Separate query and passage encoders, negatives gathered from both ranks, with and without GradCache."""
    kw = {"gradcache_chunk_size": gradcache}
    initial = _full_weights(_configured(tiny_bert_dir, **kw))
    _spawn(_retriever_worker, tiny_bert_dir, str(tmp_path), kw, 1, None)
    result = torch.load(tmp_path / "result.pt")
    weights, loss = _one_process(tiny_bert_dir, str(tmp_path / "one"), **kw)
    _assert_same_step(result, weights, loss, initial)


@pytest.mark.slow
def test_ddp_gradcache_separate_encoders_step_equals_one_process(tiny_bert_dir, tmp_path):
    """GradCache under DDP with a separate query encoder: the query encoder's gradients are all-reduced too
    (the synchronised backward takes the last chunk of both encoders), over two steps."""
    kw = {"gradcache_chunk_size": 1}
    initial = _full_weights(_configured(tiny_bert_dir, **kw))
    _spawn(_retriever_worker, tiny_bert_dir, str(tmp_path), kw, 2, None, "ddp")
    result = torch.load(tmp_path / "result.pt")
    for name, w in result["weights"].items():      # the ranks hold the same weights
        assert torch.equal(w, result["rank1_weights"][name]), name
    weights, loss = _one_process(tiny_bert_dir, str(tmp_path / "one"), steps=2, **kw)
    _assert_same_step(result, weights, loss, initial)


def _configured(model_dir, **kw):
    model = _retriever(model_dir, **kw)
    model.configure_model()
    return model


# -- SearchR1 (GRPO, a fixed search engine) -------------------------------------------------------------------
QUESTIONS = [{"question": f"where is tower {i}", "answers": ["Paris"]} for i in range(4)]


class FixedSearch:
    """The same passage for every query (a real engine's output format, without an index)."""

    def __call__(self, queries, k=3):
        from rl.search import Passage

        return [[Passage("d0", "Tower facts", "The tower is in Paris.", 1.0)] for _ in queries]


def _search_r1_class():
    from lightning_modules import SearchR1

    class AllRowsSearchR1(SearchR1):
        """Samples the rollouts of the whole global batch with one seed on every rank and keeps its own rows:
        sampling is then identical to one process's, so the step itself (reward, reference, advantage, sharded
        update) is what is compared. Generation runs through the sharded policy (full_parameters)."""

        def sample(self, prompts, greedy=False):
            if greedy:
                return super().sample(prompts, greedy)
            group = self.hparams.group_size
            every = self.prompts([q["question"] for q in QUESTIONS], group)
            torch.manual_seed(1234)
            r = super().sample(every, greedy)
            rows = [i for i, p in enumerate(every) if p in prompts]
            assert len(rows) == len(prompts)
            return r.select(torch.tensor(rows))

    return AllRowsSearchR1


def _search_r1(model_dir):
    from test_search_r1 import ChooseBetween
    from transformers import AutoTokenizer, LogitsProcessorList

    # answers forced to <answer>Paris|Rome</answer>, chosen with the policy's probabilities: rewards differ
    # within a group, so GRPO's advantages (and the gradient) are not zero
    choose = ChooseBetween(AutoTokenizer.from_pretrained(model_dir), ["Paris", "Rome"])
    return _search_r1_class()(model_dir, search=FixedSearch(), search_k=1, max_searches=1, algorithm="grpo",
                              group_size=4, max_turn_tokens=16, max_response_tokens=24, kl_coef=0.1,
                              micro_batch_size=2, log_rollouts=0, temperature=1.0, optimizer=sgd,
                              generation_kwargs={"logits_processor": LogitsProcessorList([choose])})


def _rows(rows):
    return {"question": [r["question"] for r in rows], "answers": [r["answers"] for r in rows]}


def _search_r1_worker(rank, world, port, model_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from lightning_modules.sharding import FSDP2Strategy

    model = _search_r1(model_dir)
    trainer = _trainer(2, FSDP2Strategy(), out_dir, max_steps=1, enable_checkpointing=False)
    trainer.fit(model, DataLoader(QUESTIONS, batch_size=2, collate_fn=_rows))
    weights = {n: w for n, w in _full_weights(model).items() if n.startswith("policy.")}
    sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    reference_sharded = sum(type(p).__name__ == "DTensor" for p in model.reference.model.parameters())
    greedy = model.sample(model.prompts([q["question"] for q in QUESTIONS[rank::2]]), greedy=True).responses
    everything = [None] * world
    torch.distributed.all_gather_object(everything, greedy)
    if rank == 0:
        torch.save({"weights": weights, "sharded": sharded, "nparams": len(list(model.parameters())),
                    "reference_sharded": reference_sharded, "greedy": everything},
                   os.path.join(out_dir, "result.pt"))


@pytest.mark.slow
def test_search_r1_grpo_fsdp2_step_equals_one_process(tiny_llama_dir, tmp_path):
    from torch.utils.data import DataLoader

    _spawn(_search_r1_worker, tiny_llama_dir, str(tmp_path))
    result = torch.load(tmp_path / "result.pt")
    model = _search_r1(tiny_llama_dir)
    model.configure_model()
    initial = {n: w for n, w in _full_weights(model).items() if n.startswith("policy.")}
    _trainer(1, "auto", str(tmp_path / "one"), max_steps=1, enable_checkpointing=False).fit(
        model, DataLoader(QUESTIONS, batch_size=4, collate_fn=_rows))
    weights = {n: w for n, w in _full_weights(model).items() if n.startswith("policy.")}
    assert result["sharded"] == result["nparams"] and result["reference_sharded"] > 0
    updates = {n: w - initial[n] for n, w in weights.items()}
    floor = 1e-5 * max(u.abs().max().item() for u in updates.values())
    assert floor > 0
    bad = {n: ((result["weights"][n] - initial[n] - u).abs().max().item(), u.abs().max().item())
           for n, u in updates.items()}
    bad = {n: e for n, e in bad.items() if e[0] > 1e-3 * e[1] + floor}
    assert not bad, (floor, bad)
    # greedy generation through the sharded policy: each rank's questions, as one process answers them
    greedy = model.sample(model.prompts([q["question"] for q in QUESTIONS[0::2] + QUESTIONS[1::2]]), greedy=True)
    assert result["greedy"][0] + result["greedy"][1] == greedy.responses
