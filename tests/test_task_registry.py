"""The task registry (tasks/registry.py): the built-in tasks, clear errors for unknown names and options, and
a new task added with one file and a config (tests/extension_examples/toy_task.py), used end to end by the
self-correction DataModule and SelfCorrectEvaluator through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.registry import MBPPOptions, Task, get_task, register_task, task_instruction, task_kind, task_names, \
    task_reward

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
TOY = "tests.extension_examples.toy_task:reverse"


def test_builtin_tasks_kinds_rewards_and_instructions():
    from tasks.math_grading import math_reward
    from tasks.prompts import INSTRUCTIONS
    from tasks.sandbox import code_reward

    assert {"gsm8k", "math", "math500", "humaneval", "mbpp", "arithmetic"} <= set(task_names())
    assert [task_kind(t) for t in ("gsm8k", "math", "math500", "arithmetic", "humaneval", "mbpp")] == \
        ["math"] * 4 + ["code"] * 2
    assert task_kind("code") == "code" and task_reward("code") is code_reward   # a kind alone still works
    assert task_reward("arithmetic") is math_reward and task_reward("humaneval") is code_reward
    assert task_instruction("mbpp") == INSTRUCTIONS["code"] and task_instruction("gsm8k") == INSTRUCTIONS["math"]


def test_unknown_names_options_and_repeats_are_clear_errors():
    from datamodules.self_correction import SelfCorrectionDataModule

    with pytest.raises(ValueError, match=r"unknown self-correction task 'nq'; expected one of \['arithmetic', "):
        get_task("nq")
    with pytest.raises(ValueError, match="unknown self-correction task 'nq'"):
        SelfCorrectionDataModule(task="nq")
    with pytest.raises(ValueError, match=r"task 'mbpp': unknown option\(s\) \['split'\]; expected some of "
                                         r"\['train_split', 'test_split', 'shots_split'\]"):
        SelfCorrectionDataModule(task="mbpp", options={"split": "test"})
    with pytest.raises(ValueError, match=r"task 'gsm8k' takes no options, got \['digits'\]"):
        SelfCorrectionDataModule(task="gsm8k", options={"digits": 3})
    with pytest.raises(ValueError, match="mbpp options: test_split 'dev' not in"):
        MBPPOptions(test_split="dev")
    with pytest.raises(ValueError, match="kind 'prose' is not one of"):
        Task("essay", "prose", load=lambda *a: [], reward=lambda r, e: [])
    with pytest.raises(ValueError, match="a task named 'gsm8k' is already registered"):
        register_task(Task("gsm8k", "math", load=lambda *a: [], reward=lambda r, e: []))
    with pytest.raises(ValueError, match="module 'tasks.prompts' registers no task named 'x'"):
        get_task("tasks.prompts:x")
    from tasks.problem_format import resolve_prompt

    register_task(Task("bare_code", "code", load=lambda *a: [], reward=lambda r, e: []))
    with pytest.raises(ValueError, match="task 'bare_code' has no first-attempt prompt; pass a template"):
        resolve_prompt(None, "bare_code")
    assert resolve_prompt("{problem}?", "bare_code") == "{problem}?"


def test_mbpp_options_choose_the_paper_ranges():
    from datamodules.self_correction import SelfCorrectionDataModule

    dm = SelfCorrectionDataModule(task="mbpp", options={"test_split": "validation"}, num_shots=1)
    dm.setup("test")
    assert len(dm.rows["test"]) == 90 and all(511 <= r["task_id"] <= 600 for r in dm.rows["test"])
    assert 1 <= dm.shots[0]["task_id"] <= 10


def test_shots_come_from_shots_file_else_the_tasks_pool():
    from datamodules.self_correction import SelfCorrectionDataModule

    with pytest.raises(ValueError, match="task 'reverse' has no few-shot pool; set shots_file or num_shots: 0"):
        SelfCorrectionDataModule(task=TOY, num_shots=1).setup("test")
    dm = SelfCorrectionDataModule(task=TOY, num_shots=2, shots_file="tests/extension_examples/reverse.jsonl")
    dm.setup("test")
    assert [s["problem"] for s in dm.shots] == ["lightning", "reward"]
    assert [r["problem"] for r in dm.rows["test"]] == ["tensor", "sandbox", "gradient"]  # a shot is never a test


# -- a new task: one file and a config ----------------------------------------------------------------------

def test_toy_task_from_one_file_runs_through_the_config(tiny_llama_dir, tmp_path):
    from train import cli_main

    cli = cli_main(["--config", str(ROOT / "tests/extension_examples/toy_task.yaml"),
                    "--model.init_args.lm.name_or_path", tiny_llama_dir, "--model.init_args.max_turn_tokens", "4",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false"])
    toy = get_task(TOY)
    records = [json.loads(line) for line in open(Path(cli.trainer.log_dir) / "attempts.jsonl")]
    words = ["lightning", "reward", "tensor", "sandbox", "gradient"]
    assert [r["id"] for r in records] == [f"reverse/{i}" for i in range(1, 6)]
    assert [r["answer"] for r in records] == [w[::-1] for w in words]
    # the toy's prompt and instruction, and its reward on every recorded attempt
    assert all(f"Word: {w}" in r["prompt"] and "Spell the word backwards" in r["prompt"] for r, w in zip(records, words))
    assert toy.instruction in cli.model.env.text
    examples = cli.datamodule.rows["test"]
    assert [r["r1"] for r in records] == toy.reward([r["attempt_1"] for r in records], examples)
    assert [r["r2"] for r in records] == toy.reward([r["attempt_2"] for r in records], examples)


def test_toy_task_reward_and_instruction_reach_the_evaluation(tiny_llama_dir):
    """A scripted model: attempt 1 wrong on the first word, right on the second; the script opens attempt 2 only
    on the toy's own instruction, and only the toy's reward grades the bare reversed words right."""
    from test_self_correction import Script
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from datamodules.self_correction import SelfCorrectionDataModule
    from rl.self_correction import evaluate_two_attempts

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    dm = SelfCorrectionDataModule(task=TOY, limit_test=2)
    dm.setup("test")
    toy = get_task(TOY)
    plans = {"lightning": ["gnithgil", "gninthgil"], "reward": ["drawer", "sdrawer"]}  # i->c, c->i
    script = Script(tok, {f"Word: {w}": p for w, p in plans.items()}, [toy.instruction])
    out = evaluate_two_attempts(model, tok, dm.rows["test"], TOY, problem_format=dm.problem_format,
                                max_turn_tokens=12, generation_kwargs={"logits_processor": LogitsProcessorList([script])})
    assert [r["turns"] for r in out["records"]] == list(plans.values())
    assert [(r["r1"], r["r2"]) for r in out["records"]] == [(0.0, 1.0), (1.0, 0.0)]
    assert toy.reward(["the answer is Drawer."], [{"answer": "drawer"}]) == [1.0]
