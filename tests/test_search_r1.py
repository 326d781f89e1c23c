"""SearchR1: a fast fit through the CLI (GRPO, BM25 search tool, a tiny random Llama), checkpoint
contents and resume, PPO with LoRA (reference = adapters disabled, value head), and a learning check
on a toy task whose optimum is known."""

import json

import lightning as L
import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from datamodules.rl_prompts import RLPromptDataModule
from lightning_modules.search_r1 import SearchR1
from retrieval.beir import DataFormatError
from rl.envs import SearchEnv
from rl.search import BM25Search
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from training.settings import LM
from train import cli_main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def qa_files(tmp_path):
    corpus = [{"_id": "d1", "title": "France", "text": "Paris is the capital of France."},
              {"_id": "d2", "title": "Italy", "text": "Rome is the capital of Italy."},
              {"_id": "d3", "title": "Spain", "text": "Madrid is the capital of Spain."}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    qa = [{"question": f"what is the capital of {c}?", "answers": [a]}
          for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("France", "Paris")]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa[:2]))
    return tmp_path


def test_prompt_datamodule_batches_and_bad_rows(tmp_path, qa_files):
    data = RLPromptDataModule(str(qa_files / "train.jsonl"), test_file=str(qa_files / "test.jsonl"), batch_size=3,
                              eval_batch_size=2, limit_train=3)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"id", "question", "answers"} and len(batch["question"]) == 3
    assert all(isinstance(a, list) for a in batch["answers"])
    assert next(iter(data.test_dataloader()))["answers"] == [["Paris"], ["Rome"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": ["a"]}\n{"question": "q2", "answers": []}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 2, field 'answers'"):
        RLPromptDataModule(str(bad)).setup("fit")


def test_two_process_fsdp2_default_run_fits_and_tests(tiny_llama_dir, qa_files, tmp_path):
    """`train.py` with the FSDP2 CPU preset, 2 processes (Lightning starts the second): GRPO fit with searches,
    then the test of the best (sharded) checkpoint over both ranks' questions."""
    from conftest import run_train_py

    args = [
        "--model", "lightning_modules.search_r1.SearchR1",
        "--model.lm.name_or_path", tiny_llama_dir, "--model.algorithm", "grpo",
        "--model.env", "rl.envs.SearchEnv", "--model.env.max_searches", "1",
        "--model.env.search", "rl.search.BM25Search", "--model.env.search.corpus", str(qa_files / "corpus.jsonl"),
        "--model.sampling.group_size", "2", "--model.sampling.max_turn_tokens", "6",
        "--model.sampling.max_response_tokens", "40", "--model.sampling.temperature", "0.7",
        "--model.updates.mini_batch_size", "2", "--model.updates.micro_batch_size", "2",
        "--data", "datamodules.rl_prompts.RLPromptDataModule",
        "--data.train_file", str(qa_files / "train.jsonl"), "--data.test_file", str(qa_files / "test.jsonl"),
        "--data.batch_size", "1", "--trainer.max_steps", "2", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--config", "configs/trainer/fsdp2_cpu.yaml",
    ]
    proc = run_train_py(args)
    assert "test/em" in proc.stdout and "test/search_errors" in proc.stdout


def test_grpo_fit_through_the_cli_checkpoint_and_resume(tiny_llama_dir, qa_files, tmp_path):
    args = [
        "--model", "lightning_modules.search_r1.SearchR1",
        "--model.lm.name_or_path", tiny_llama_dir, "--model.algorithm", "grpo",
        "--model.env", "rl.envs.SearchEnv", "--model.env.max_searches", "1",
        "--model.env.search", "rl.search.BM25Search", "--model.env.search.corpus", str(qa_files / "corpus.jsonl"),
        "--model.sampling.group_size", "2", "--model.sampling.max_turn_tokens", "6",
        "--model.sampling.max_response_tokens", "40", "--model.sampling.temperature", "0.7",
        "--model.loss.kl_coef", "0.01", "--model.loss.entropy_coef", "0.01", "--model.updates.epochs", "2",
        "--model.updates.mini_batch_size", "2", "--model.updates.micro_batch_size", "2",
        "--data", "datamodules.rl_prompts.RLPromptDataModule",
        "--data.train_file", str(qa_files / "train.jsonl"), "--data.test_file", str(qa_files / "test.jsonl"),
        "--data.batch_size", "2",
        "--trainer.max_steps", "4", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    cli = cli_main(["fit", *args])
    model, trainer = cli.model, cli.trainer
    # 1 rollout batch = 2 questions x G=2 = 4 rollouts, 2 epochs x 2 mini-batches = 4 optimizer steps
    assert trainer.global_step == 4
    metrics = trainer.callback_metrics
    for key in ("train/reward", "train/em", "train/searches", "train/search_errors", "train/response_length", "train/kl",
                "train/entropy", "train/clip_fraction", "train/policy_loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    # the policy moved away from the frozen reference
    moved = any(not torch.equal(p, q) for p, q in zip(model.policy.parameters(), model.reference.model.parameters()))
    assert moved

    ckpt_path = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    ckpt = torch.load(ckpt_path, weights_only=False)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("policy.") for k in keys) and any(k.startswith("reference.") for k in keys)
    assert ckpt["optimizer_states"][0]["state"], "optimizer moments must be saved"
    assert set(ckpt["rng"]) >= {"torch", "python", "numpy"}

    # resume: restores weights, optimizer, RNG and step count, then trains on
    resumed = cli_main(["fit", *args[:-6], "--trainer.max_steps", "8", "--trainer.logger", "false",
                        "--trainer.enable_progress_bar", "false", "--ckpt_path", ckpt_path,
                        "--trainer.default_root_dir", str(tmp_path / "run2")])
    assert resumed.trainer.global_step == 8

    # greedy test on held-out questions
    out = cli_main(["test", *args, "--ckpt_path", ckpt_path])
    assert {"test/em", "test/f1", "test/searches", "test/search_errors"} <= set(out.trainer.callback_metrics)


def test_ppo_with_lora_value_head_and_adapters_as_reference(tiny_llama_dir, qa_files, tmp_path):
    torch.manual_seed(0)
    model = SearchR1(LM(tiny_llama_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0}), algorithm="ppo",
                     env=SearchEnv(BM25Search(qa_files / "corpus.jsonl"), k=1, max_searches=1),
                     advantage_options={"gamma": 1.0, "lam": 0.95},
                     sampling=Sampling(group_size=1, max_turn_tokens=5, max_response_tokens=30, temperature=0.7),
                     loss=PolicyLoss(kl_coef=0.05, kl_in_reward=True), updates=Updates(epochs=2, micro_batch_size=2),
                     log_samples=SampleLog(count=0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    model.configure_model()
    policy = model.policy
    model.configure_model()  # idempotent: FSDP may call it again
    assert model.policy is policy
    assert model.reference.mode == "adapters_off" and model.reference.model is None and model.value_head is not None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)
    before = model.value_head.linear.weight.detach().clone()
    data = RLPromptDataModule(str(qa_files / "train.jsonl"), batch_size=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    m = trainer.callback_metrics
    assert {"train/value_loss", "train/kl", "train/clip_fraction"} <= set(m)
    assert not torch.equal(before, model.value_head.linear.weight)
    # a 2nd PPO epoch on the same rollouts: the ratio left 1 after the first update
    assert torch.isfinite(m["train/policy_loss"])


class ChooseBetween(LogitsProcessor):
    """Toy environment: the response is forced to ``<answer>X</answer>`` where the policy chooses X
    among ``choices`` with its own probabilities (other tokens are masked)."""

    def __init__(self, tokenizer, choices):
        self.prefix = tokenizer("<answer>", add_special_tokens=False)["input_ids"]
        self.suffix = tokenizer("</answer>", add_special_tokens=False)["input_ids"]
        self.choices = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices]
        self.start = None
        self.eos = tokenizer.eos_token_id

    def __call__(self, input_ids, scores):
        if self.start is None or input_ids.shape[1] <= self.start:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        if step == len(self.prefix) + 1 + len(self.suffix) - 1:  # the last call of this generate
            start, self.start = self.start, None
            step = input_ids.shape[1] - start
        allowed = torch.full_like(scores, float("-inf"))
        if step < len(self.prefix):
            allowed[:, self.prefix[step]] = 0
        elif step == len(self.prefix):
            allowed[:, self.choices] = scores[:, self.choices]
        elif step < len(self.prefix) + 1 + len(self.suffix):
            allowed[:, self.suffix[step - len(self.prefix) - 1]] = 0
        else:
            allowed[:, self.eos] = 0
        return allowed


class RewardHistory(L.Callback):
    def __init__(self):
        self.rewards = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rewards.append(float(trainer.callback_metrics["train/reward"]))


@pytest.mark.slow
def test_grpo_learns_a_toy_task_with_a_known_optimum(tiny_llama_dir, qa_files):
    """The answer is always Paris (reward 1); Rome gets 0. The random policy starts near 1/2; GRPO must
    push the reward toward the optimum 1."""
    L.seed_everything(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    qa = qa_files / "paris.jsonl"
    qa.write_text("".join(json.dumps({"question": f"question {i}", "answers": ["Paris"]}) + "\n" for i in range(8)))
    choose = LogitsProcessorList([ChooseBetween(tokenizer, ["Paris", "Rome"])])
    model = SearchR1(LM(tiny_llama_dir), env=None, template="{question}", chat=False, algorithm="grpo",
                     sampling=Sampling(group_size=8, max_turn_tokens=8, max_response_tokens=8,
                                       generation_kwargs={"logits_processor": choose}),
                     loss=PolicyLoss(kl_coef=0.0), updates=Updates(epochs=2, micro_batch_size=16),
                     log_samples=SampleLog(count=0), optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    history = RewardHistory()
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[history])
    trainer.fit(model, RLPromptDataModule(str(qa), batch_size=1))
    first, last = sum(history.rewards[:3]) / 3, sum(history.rewards[-3:]) / 3
    # The policy's own preference between the two answers after the choice point, for every question
    choice = ChooseBetween(tokenizer, ["Paris", "Rome"])
    with torch.no_grad():
        p_paris = []
        for i in range(8):
            ids = tokenizer(f"question {i}<answer>", add_special_tokens=False, return_tensors="pt")["input_ids"]
            logits = model.policy(input_ids=ids).logits[0, -1, choice.choices]
            p_paris.append(torch.softmax(logits, -1)[0].item())
    print("reward per step", history.rewards, "P(Paris)", p_paris)
    assert first < 0.75 and last >= 0.9, history.rewards
    assert min(p_paris) > 0.9, p_paris


@pytest.mark.parametrize("stop", [1, 2], ids=["mid_epoch", "epoch_boundary"])
def test_grpo_resume_equals_an_uninterrupted_run(tiny_llama_dir, qa_files, stop, tmp_path):
    """3 GRPO steps in one run == ``stop`` steps, a checkpoint, a stop, and the rest resumed from it (2 steps an
    epoch: step 1 stops mid-epoch, step 2 at the boundary). What the RNG drives: sampled rollouts (temperature
    0.7) and LoRA dropout in the update; the resumed run must continue both streams and the question order
    (tests/test_resume.py)."""
    from test_resume import assert_same_weights, full_and_resumed

    args = ["--model", "lightning_modules.search_r1.SearchR1", "--model.lm.name_or_path", tiny_llama_dir,
            "--model.lm.lora", '{"r": 4, "alpha": 8, "dropout": 0.2}', "--model.algorithm", "grpo",
            "--model.env", "rl.envs.SearchEnv", "--model.env.max_searches", "1",
            "--model.env.search", "rl.search.BM25Search", "--model.env.search.corpus", str(qa_files / "corpus.jsonl"),
            "--model.sampling.group_size", "2", "--model.sampling.max_turn_tokens", "6",
            "--model.sampling.max_response_tokens", "24", "--model.sampling.temperature", "0.7",
            "--model.loss.kl_coef", "0.01",
            "--model.loss.entropy_coef", "0.05",  # a gradient even when every reward is 0 (a random policy)
            "--model.updates.micro_batch_size", "4", "--model.log_samples.count", "0",
            "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.05",
            "--data", "datamodules.rl_prompts.RLPromptDataModule", "--data.train_file", str(qa_files / "train.jsonl"),
            "--data.batch_size", "2", "--seed_everything", "3", "--trainer.accelerator", "cpu",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "-1"]
    full, resumed = full_and_resumed(args, total=3, stop=stop, tmp_path=tmp_path)
    trainable = [n for n, p in full.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(full.model.state_dict()[n].abs().sum() > 0 for n in trainable if "lora_B" in n), "adapters never moved"
    assert_same_weights(full, resumed)
