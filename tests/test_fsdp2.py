"""FSDP2 (training.sharding.FSDP2Strategy) with 2 CPU processes (gloo): one training step of each
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


def _retriever(model_dir, optimizer=sgd, gradcache_chunk_size=None):
    from lightning_modules import ContrastiveRetriever
    from retrieval.losses import InfoNCE
    from retrieval.settings import EncoderSettings, GradCacheSettings, Negatives

    return ContrastiveRetriever(EncoderSettings(model_dir, query_max_length=16, passage_max_length=16),
                                shared_encoder=False, similarity="dot", loss=InfoNCE(temperature=1.0), optimizer=optimizer,
                                warmup=0, negatives=Negatives(gather=True),
                                gradcache=GradCacheSettings(chunk_size=gradcache_chunk_size))


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

    from training.sharding import FSDP2Strategy

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
    if strategy == "fsdp2":
        # corpus shares of different sizes, as callbacks.IndexRefresh gives the ranks: rank 0 runs 3 forwards,
        # rank 1 one; through the sharded encoder (a collective per forward) this would hang
        texts = [p for _, p in PAIRS]
        encoded = model.encode_passages(texts[:3] if rank == 0 else texts[3:], batch_size=1)
        shares = [None] * world
        torch.distributed.all_gather_object(shares, encoded)
        # train.py's export after a sharded fit (every rank calls it; rank 0 writes)
        from training.sharding import export_whole

        export_whole(model, os.path.join(out_dir, "export"))
    if rank == 0:
        result = {"weights": weights, "loss": loss / world, "rank1_weights": others[1]}
        if strategy == "fsdp2":
            result.update(sharded=sharded, nparams=len(weights), encoded=torch.cat(shares))
        torch.save(result, os.path.join(out_dir, "result.pt"))


def _spawn(worker, *args, timeout: float = 300.0):
    """Run ``worker`` on 2 processes; a hang (ranks waiting on each other's collectives) fails the test."""
    import time

    context = mp.spawn(worker, args=(2, _free_port(), *args), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2 processes did not finish in {timeout:.0f} s (a collective waiting on the other rank?)")


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
    # the ranks' unequal corpus shares, encoded after the step, are what one process encodes with those weights
    trained = _configured(tiny_bert_dir, **kw)
    missing, unexpected = trained.load_state_dict(result["weights"], strict=False)
    assert not unexpected and not [n for n in missing if not n.startswith("moco")], (missing, unexpected)
    expected = trained.encode_passages([p for _, p in PAIRS], batch_size=4)
    torch.testing.assert_close(result["encoded"], expected, atol=1e-5, rtol=1e-4)
    # the export written after the sharded step holds the trained weights, whole
    from transformers import AutoModel

    for side in ("query", "passage"):
        exported = AutoModel.from_pretrained(tmp_path / "export" / side).state_dict()
        trained_side = {n.split(".model.", 1)[1]: w for n, w in result["weights"].items()
                        if n.startswith(f"{side}_encoder.model.")}
        assert trained_side and set(trained_side) <= set(exported), set(trained_side) - set(exported)
        for n, w in trained_side.items():
            assert torch.equal(exported[n], w), n


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
            group = self.sampling.group_size
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
    from rl.envs import SearchEnv
    from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
    from training.settings import LM

    return _search_r1_class()(LM(model_dir), env=SearchEnv(FixedSearch(), k=1, max_searches=1), algorithm="grpo",
                              sampling=Sampling(group_size=4, max_turn_tokens=16, max_response_tokens=24,
                                                generation_kwargs={"logits_processor": LogitsProcessorList([choose])}),
                              loss=PolicyLoss(kl_coef=0.1), updates=Updates(micro_batch_size=2),
                              log_samples=SampleLog(count=0), optimizer=sgd)


def _rows(rows):
    return {"question": [r["question"] for r in rows], "answers": [r["answers"] for r in rows]}


def _search_r1_worker(rank, world, port, model_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from training.sharding import FSDP2Strategy

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


# -- ReplugLSR, RetRobust, SCoRe: one worker, a factory per method ---------------------------------------------
# Each factory builds (module, data, names of the metrics that make up the loss) from picklable arguments, so the
# same call runs in the 2 spawned processes (each rank holding half the batch: Lightning's DistributedSampler
# deals the rows out in a seeded shuffle) and in this process holding the whole batch.
def _method_worker(rank, world, port, factory, args, out_dir, trainer_kw):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from training.sharding import FSDP2Strategy

    model, data, keys = factory(*args, batch_size=2)
    trainer = _trainer(2, FSDP2Strategy(), out_dir, max_steps=1, enable_checkpointing=False, **trainer_kw)
    trainer.fit(model, data)
    # each rank logs the loss of its own rows: the batch's loss is the mean (equal rows per rank)
    loss = torch.stack([trainer.callback_metrics[k].detach().float() for k in keys])
    torch.distributed.all_reduce(loss)
    result = {"weights": _trainable(model), "loss": loss / world, "nparams": len(_trainable(model)),
              "sharded": sum(type(p).__name__ == "DTensor" for p in model.parameters() if p.requires_grad),
              "whole": sorted({n.split(".")[0] for n, p in model.named_parameters() if type(p).__name__ != "DTensor"}),
              "reference": getattr(getattr(model, "reference", None), "mode", None)}
    if hasattr(model, "export"):  # train.py's export after a sharded fit (every rank calls it; rank 0 writes)
        from training.sharding import export_whole

        export_whole(model, os.path.join(out_dir, "export"))
    if rank == 0:
        torch.save(result, os.path.join(out_dir, "result.pt"))


def _trainable(model) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: w for n, w in _full_weights(model).items() if n in names}


def _one_process_step(factory, args, root, trainer_kw):
    import lightning as L

    model, data, keys = factory(*args, batch_size=4)
    initial = None

    class Initial(L.Callback):
        def on_train_start(self, trainer, module):  # after configure_model (and any test-set adapters)
            nonlocal initial
            initial = _trainable(module)

    _trainer(1, "auto", root, max_steps=1, enable_checkpointing=False, callbacks=[Initial()], **trainer_kw).fit(
        model, data)
    return initial, _trainable(model), torch.stack([model.trainer.callback_metrics[k].detach().float() for k in keys])


def _compare_methods(factory, args, tmp_path, trainer_kw=None):
    trainer_kw = trainer_kw or {}
    _spawn(_method_worker, factory, args, str(tmp_path), trainer_kw)
    result = torch.load(tmp_path / "result.pt")
    initial, weights, loss = _one_process_step(factory, args, str(tmp_path / "one"), trainer_kw)
    _assert_same_step(result, weights, loss, initial)
    return result


def _set_adapters(model, scale=0.1):
    """Seeded A and B of every LoRA adapter (peft starts B at 0: the first step would move B only, and an
    adapters-off reference would equal the policy), the same in every process; a sharded parameter gets its
    shard of the same tensor."""
    from torch.distributed.tensor import distribute_tensor

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                full = torch.randn(p.shape, generator=g) * scale
                p.copy_(distribute_tensor(full, p.device_mesh, p.placements) if hasattr(p, "device_mesh") else full)


# ReplugLSR: a 10-passage corpus, 4 questions whose top-3 passages differ; the frozen LM scores them
LSR_PASSAGES = {f"d{i}": f"passage {i} says the {w} is {c}" for i, (w, c) in enumerate(
    [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"), ("coal", "black"),
     ("rose", "red"), ("sea", "deep"), ("road", "long"), ("tower", "tall"), ("cave", "dark")])}
LSR_ROWS = [{"id": f"q{i}", "input": f"what colour is the {w}", "target": t, "exclude": [], "gold_id": None}
            for i, (w, t) in enumerate([("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")])]


def _lsr(retriever_dir, lm_dir, train_passage_encoder, batch_size):
    import lightning as L
    from torch.utils.data import DataLoader

    from datamodules.lsr import collate_lsr
    from generation.prompts import PromptFormat
    from lightning_modules.replug_lsr import ReplugLSR
    from retrieval.lsr import LSRLoss
    from retrieval.lsr_lm import LMScoring, ReplugEval
    from retrieval.settings import EncoderSettings
    from training.settings import LM

    class Data(L.LightningDataModule):
        passages, doc_ids = LSR_PASSAGES, list(LSR_PASSAGES)

        def train_dataloader(self):
            return DataLoader(LSR_ROWS, batch_size=batch_size, collate_fn=collate_lsr)

    model = ReplugLSR(EncoderSettings(retriever_dir, query_max_length=16, passage_max_length=16), LM(lm_dir),
                      train_passage_encoder, loss=LSRLoss(top_k=3, gamma=0.1, beta=0.1),
                      scoring=LMScoring(PromptFormat(chat=False, answer_prefix="Answer:"), batch_size=16),
                      optimizer=sgd, warmup=0, replug=ReplugEval(k=0))
    return model, Data(), ["train/loss"]


@pytest.mark.slow
@pytest.mark.parametrize("train_passage_encoder", [True, False], ids=["shared", "query_side"])
def test_replug_lsr_fsdp2_step_equals_one_process(tiny_bert_dir, tiny_llama_dir, tmp_path, train_passage_encoder):
    """The trained encoder sharded (the shared one, or Atlas's query encoder with the passage encoder frozen and
    whole), the frozen LM whole; gradient clipping on (its norm must be the global one)."""
    result = _compare_methods(_lsr, (tiny_bert_dir, tiny_llama_dir, train_passage_encoder), tmp_path,
                              {"gradient_clip_val": 0.05})
    # the frozen passage encoder (query-side variant) stays whole; the LM is outside the module tree
    assert result["whole"] == ([] if train_passage_encoder else ["passage_encoder"])
    # the export written after the sharded step holds the trained encoder, whole
    from transformers import AutoModel

    side, prefix = ("", "passage_encoder.model.") if train_passage_encoder else ("query", "query_encoder.model.")
    exported = AutoModel.from_pretrained(tmp_path / "export" / side).state_dict()
    trained = {n[len(prefix):]: w for n, w in result["weights"].items() if n.startswith(prefix)}
    assert trained and set(trained) <= set(exported)
    for n, w in trained.items():
        assert torch.equal(exported[n], w), n


# RetRobust: LoRA on the tiny Llama; rows of different prompts and lengths. masked_nll divides by the answer
# tokens of the batch it sees: every row has 2 answer tokens, so that each rank's half holds as many as the
# other's, whichever rows the sampler deals it, and the mean of the ranks' losses is the whole batch's (with
# unequal counts the ranks' tokens would weigh differently, under DDP as under FSDP2).
RETROBUST_ROWS = [([5, 17, 230, 41, 9], 2), ([77, 310, 12, 6, 801, 44, 2], 2), ([900, 3, 55, 120], 2),
                  ([8, 61, 402, 19, 27, 33], 2)]


def _retrobust_collate(rows):
    from generation.tokens import TokenBatch

    return {"tokens": TokenBatch.from_segments([[(ids[:-n], 0), (ids[-n:], 1)] for ids, n in rows], pad_id=0)}


def _retrobust(lm_dir, batch_size, rows=RETROBUST_ROWS, micro_batch_size=1):
    from torch.utils.data import DataLoader

    from lightning_modules.retrobust import RetRobust
    from training.settings import LM

    class SetAdapters(RetRobust):
        def configure_model(self):
            fresh = self.lm is None
            super().configure_model()
            if fresh:
                _set_adapters(self.lm)

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = SetAdapters(LM(lm_dir, lora=lora), evaluate_base=False, optimizer=sgd, warmup=0.0,
                        micro_batch_size=micro_batch_size, nli_kinds=())
    return model, DataLoader(rows, batch_size=batch_size, collate_fn=_retrobust_collate), ["train/loss"]


@pytest.mark.slow
def test_retrobust_lora_fsdp2_step_equals_one_process(tiny_llama_dir, tmp_path):
    """The LM sharded block by block with its LoRA adapters, micro-batches of one row (gradients accumulate
    before the reduce-scatter), gradient clipping on."""
    result = _compare_methods(_retrobust, (tiny_llama_dir,), tmp_path, {"gradient_clip_val": 0.05})
    assert result["whole"] == []    # the frozen base is sharded too
    # the merged export written after the sharded step: base + (alpha / r) B A with the trained adapters
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    checked = 0
    for n, a in result["weights"].items():
        if ".lora_A." not in n:
            continue
        b = result["weights"][n.replace(".lora_A.", ".lora_B.")]
        key = n.split("base_model.model.", 1)[1].replace(".lora_A.default", "")
        torch.testing.assert_close(exported[key], base[key] + (8 / 4) * b @ a, atol=1e-6, rtol=1e-5)
        checked += 1
    assert checked == 2 * 2    # q_proj and v_proj of both layers
    assert (tmp_path / "export" / "adapter").is_dir()


def test_a_4bit_base_is_refused_by_fsdp2():
    bnb = pytest.importorskip("bitsandbytes")
    from training.sharding import refuse_quantized

    with pytest.raises(ValueError, match="bitsandbytes-quantized base.*load_in_4bit false"):
        refuse_quantized(torch.nn.Sequential(bnb.nn.Linear4bit(64, 64)))
    refuse_quantized(torch.nn.Sequential(torch.nn.Linear(64, 64)))   # a plain model passes


# SCoRe: Stage I on two attempts, LoRA policy with the adapters-off reference (KL on both attempts)
SCORE_PROBLEMS = [{"id": f"p{i}", "task": "gsm8k", "problem": f"Add {i} and {i + 3}.", "answer": str(2 * i + 3)}
                  for i in range(4)]


def _score(lm_dir, batch_size):
    from torch.utils.data import DataLoader

    from lightning_modules.score import SCoRe
    from rl.self_correction import ProblemFormat
    from test_score import parity_reward

    class AllRowsSCoRe(SCoRe):
        """Samples the rollouts of the whole global batch with one seed on every rank and keeps its own rows (as
        AllRowsSearchR1 does); generation runs through the sharded policy (full_parameters)."""

        def configure_model(self):
            fresh = self.policy is None
            super().configure_model()
            if fresh:
                _set_adapters(self.policy)

        def sample(self, prompts):
            every = [self.format.render(self.tokenizer, ex, self.task)
                     for ex in SCORE_PROBLEMS for _ in range(self.sampling.group_size)]
            torch.manual_seed(1234)
            r = super().sample(every)
            rows = [i for i, p in enumerate(every) if p in prompts]
            assert len(rows) == len(prompts)
            return r.select(torch.tensor(rows))

    from rl.score import Objective
    from rl.settings import SampleLog, Sampling, Updates
    from training.settings import LM

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = AllRowsSCoRe(LM(lm_dir, lora=lora), stage="I", task="gsm8k", reward=parity_reward, instruction="Check it.",
                         sampling=Sampling(group_size=2, max_turn_tokens=4, max_response_tokens=64),
                         objective=Objective(beta1=0.05, beta2=0.1), updates=Updates(micro_batch_size=8),
                         log_samples=SampleLog(count=0), optimizer=sgd)
    model.format = ProblemFormat(prompt="{problem}", chat=False)
    return model, DataLoader(SCORE_PROBLEMS, batch_size=batch_size, collate_fn=lambda rows: rows), \
        ["train/policy_loss", "train/reward_t2"]


@pytest.mark.slow
def test_score_lora_fsdp2_step_equals_one_process(tiny_llama_dir, tmp_path):
    """Two-attempt rollouts through the sharded policy, the adapters-off reference on the sharded base, RLOO per
    attempt, per-attempt KL, clipping (max_grad_norm). One micro-batch per rank, so that the logged policy loss
    is the whole loss (rl.update averages its stats over micro-batches)."""
    result = _compare_methods(_score, (tiny_llama_dir,), tmp_path)
    assert result["reference"] == "adapters_off" and result["whole"] == []


# -- a sharded checkpoint resumes --------------------------------------------------------------------------------
def momentum_sgd(params):
    # momentum: the step after the resume depends on the optimizer state the checkpoint restored
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def _stop_after_epoch(epoch: int):
    import lightning as L

    class Stop(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == epoch:
                trainer.should_stop = True

    return Stop()


def _resume_worker(rank, world, port, model_dir, out_dir, stop_after_epoch, ckpt_path):
    """3 epochs of one step per rank (4 pairs, 2 per rank, reshuffled every epoch by the sampler's epoch seed), a
    sharded checkpoint at every epoch end; stopped after ``stop_after_epoch`` (None: uninterrupted), or resumed
    from ``ckpt_path``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from training.sharding import FSDP2Strategy

    model = _retriever(model_dir, optimizer=momentum_sgd)
    callbacks = [ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpt"), every_n_epochs=1, save_top_k=-1,
                                 save_on_train_epoch_end=True)]
    if stop_after_epoch is not None:
        callbacks.append(_stop_after_epoch(stop_after_epoch))
    trainer = _trainer(2, FSDP2Strategy(), out_dir, max_epochs=3, callbacks=callbacks)
    trainer.fit(model, DataLoader(PAIRS, batch_size=2, shuffle=True, collate_fn=_collate), ckpt_path=ckpt_path)
    weights = _full_weights(model)
    if rank == 0:
        torch.save({"weights": weights, "global_step": trainer.global_step,
                    "checkpoints": sorted(os.listdir(os.path.join(out_dir, "ckpt")))},
                   os.path.join(out_dir, "result.pt"))


@pytest.mark.slow
def test_sharded_checkpoint_resume_equals_uninterrupted(tiny_bert_dir, tmp_path):
    """ContrastiveRetriever under FSDP2 (2 gloo processes): 3 steps in one run == 2 steps, a sharded checkpoint
    (a folder, one shard per rank) at the epoch boundary, and the last step resumed from it. SGD with momentum:
    the resumed step is right only if the weights, the optimizer's momentum, the scheduler and the epoch (the
    sampler's shuffle) all came back."""
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    _spawn(_resume_worker, tiny_bert_dir, str(full), None, None)
    _spawn(_resume_worker, tiny_bert_dir, str(part), 1, None)
    ckpt = part / "ckpt" / torch.load(part / "result.pt")["checkpoints"][-1]
    assert ckpt.is_dir() and len([f for f in os.listdir(ckpt) if f.endswith(".distcp")]) == 2, os.listdir(ckpt)
    _spawn(_resume_worker, tiny_bert_dir, str(resumed), None, str(ckpt))
    a, b, mid = (torch.load(d / "result.pt") for d in (full, resumed, part))
    assert a["global_step"] == b["global_step"] == 3 and mid["global_step"] == 2
    moved = [n for n, w in a["weights"].items() if not torch.allclose(w, mid["weights"][n], atol=1e-6)]
    assert len(moved) > len(a["weights"]) // 2        # the resumed step changes the weights
    for n, w in a["weights"].items():
        torch.testing.assert_close(b["weights"][n], w, atol=1e-6, rtol=1e-5, msg=n)


def test_train_py_default_run_under_fsdp2_fits_tests_and_exports(tiny_bert_dir, tiny_beir_dir, tmp_path):
    """What a user runs: `python train.py --config configs/dpr_scifact.yaml --config configs/trainer/fsdp2_cpu.yaml`
    (Lightning starts the second process itself). Fit, the test of the best (sharded) checkpoint and the export
    run on both ranks and end with exit code 0 (before: the test's metrics broadcast received rank 0's log
    directory, and the export called save_pretrained on rank 0's shards)."""
    import json

    from conftest import run_train_py
    from transformers import AutoModel

    run_train_py(["--config", "configs/dpr_scifact.yaml", "--config", "configs/trainer/fsdp2_cpu.yaml",
                  "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--data.init_args.data_dir", str(tiny_beir_dir),
                  "--trainer.max_steps", "2", "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "4",
                  "--model.init_args.optimizer.init_args.lr", "0.01",
                  "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], RAGKIT_PRECISION="fp32")
    run = tmp_path / "runs" / "dpr_scifact" / "version_0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["num_queries"] == 4 and 0.0 <= metrics["ndcg@10"] <= 1.0
    assert list(run.glob("checkpoints/*.ckpt/__1_0.distcp"))   # a sharded checkpoint: one file per rank
    exported = AutoModel.from_pretrained(run / "export").state_dict()
    initial = AutoModel.from_pretrained(tiny_bert_dir).state_dict()
    assert exported.keys() == initial.keys()
    assert any(not torch.equal(exported[k], initial[k]) for k in initial)   # the trained weights, whole
