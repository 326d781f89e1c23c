"""Self-correction: SCoRe's metrics against hand counts, the instruction masked and attempt 2 numbered as
turn 1, the two-attempt and Self-Refine evaluations on a tiny Llama whose attempts are scripted (so the
rewards are known), the problems DataModule, and the evaluation config end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from rl.rollout import rollout
from rl.self_correction import attempt_metrics, evaluate_two_attempts, self_refine_env, two_attempt_env
from tasks.problem_format import ProblemFormat, render_problem
from tasks.prompts import INSTRUCTIONS, SELF_REFINE_FEEDBACK, SELF_REFINE_REFINE
from tasks.registry import task_reward

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


# -- metrics ------------------------------------------------------------------------------------------------

def test_attempt_metrics_by_hand():
    # 7 problems: (1,1) (0,1) (0,0) (1,0) (1,1) (0,1) (0,0)
    r1 = [1, 0, 0, 1, 1, 0, 0]
    r2 = [1, 1, 0, 0, 1, 1, 0]
    m = attempt_metrics(r1, r2)
    assert m["accuracy@t1"] == pytest.approx(3 / 7)
    assert m["accuracy@t2"] == pytest.approx(4 / 7)
    assert m["delta(t1,t2)"] == pytest.approx(1 / 7)
    assert m["delta_i->c"] == pytest.approx(2 / 7)   # problems 1 and 5: wrong, then right
    assert m["delta_c->i"] == pytest.approx(1 / 7)   # problem 3: right, then wrong
    assert m["n"] == 7
    # a model that breaks more than it fixes: Delta < 0
    m = attempt_metrics([1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0])
    assert (m["accuracy@t1"], m["accuracy@t2"], m["delta(t1,t2)"], m["delta_i->c"], m["delta_c->i"]) == \
        pytest.approx((0.75, 0.25, -0.5, 0.0, 0.5))


def test_attempt_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="binary"):
        attempt_metrics([0.5], [1.0])
    with pytest.raises(ValueError, match="2 first-attempt but 1"):
        attempt_metrics([0, 1], [1])
    with pytest.raises(ValueError, match="no problems"):
        attempt_metrics([], [])


def test_task_reward_is_the_metric():
    from tasks.math_grading import math_reward
    from tasks.sandbox import code_reward

    assert task_reward("gsm8k") is math_reward and task_reward("math500") is math_reward
    assert task_reward("mbpp") is code_reward and task_reward("humaneval") is code_reward
    with pytest.raises(ValueError, match="unknown self-correction task"):
        task_reward("nq")


def test_instructions_are_the_papers():
    assert INSTRUCTIONS["math"].startswith("There might be an error in the solution above because of lack of "
                                           "understanding of the question. Please correct the error, if any, and "
                                           "rewrite the solution. Only output the final solution!")
    assert INSTRUCTIONS["math"].endswith('"Final Answer: The final answer is $answer$. I hope it is correct."')
    assert INSTRUCTIONS["code"].endswith("rewrite the solution. Only output the final correct Python program!")


# -- scripted tiny model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


class Script(LogitsProcessor):
    """Forces each row to write ``plans[marker][turn]`` then EOS: the row's problem is found by its marker,
    the turn by how many of ``instructions`` the context holds (each one opens the next turn)."""

    def __init__(self, tok, plans: dict[str, list[str]], instructions: list[str]):
        self.tok, self.plans, self.instructions = tok, plans, instructions

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        eos = self.tok.eos_token_id
        for b in range(input_ids.shape[0]):
            text = self.tok.decode(input_ids[b], skip_special_tokens=False)
            marker = next(m for m in self.plans if m in text)
            turn = sum(text.count(i) for i in self.instructions)
            so_far = text.rsplit("<|im_start|>assistant\n", 1)[-1]
            plan = self.tok(self.plans[marker][turn], add_special_tokens=False)["input_ids"] + [eos]
            nxt = next((plan[k] for k in range(len(plan)) if self.tok.decode(plan[:k]) == so_far), eos)
            forced[b, nxt] = 0.0
        return forced


def problems(n: int) -> list[dict]:
    return [{"id": f"p{i}", "task": "gsm8k", "problem": f"[p{i}] Tom has 2 apples and gets 3 more. How many?",
             "answer": "5", "solution": "2+3=5\n#### 5"} for i in range(n)]


# (attempt 1, attempt 2) per problem, gold 5: i->c, c->i, c->c, i->i, i->c
PLANS = {"[p0]": ["He has 6.", "He has 5."], "[p1]": ["He has 5.", "He has 7."], "[p2]": ["So 5.", "So 5."],
         "[p3]": ["It is 4.", "It is 3."], "[p4]": ["It is 2.", "It is 5."]}


def test_instruction_is_masked_and_attempt_two_is_turn_one(lm):
    model, tok = lm
    env = two_attempt_env(tok, "gsm8k")
    assert env.attempt_turns == (0, 1) and INSTRUCTIONS["math"] in env.text and "<|im_start|>user" in env.text
    prompts = [render_problem(tok, ex) for ex in problems(2)]
    script = Script(tok, PLANS, [INSTRUCTIONS["math"]])
    r = rollout(model, tok, prompts, env, max_turn_tokens=16, max_response_tokens=400, do_sample=False,
                compute_logprobs=False, generation_kwargs={"logits_processor": LogitsProcessorList([script])})
    assert r.turn_texts == [PLANS["[p0]"], PLANS["[p1]"]]
    for row, plan in enumerate((PLANS["[p0]"], PLANS["[p1]"])):
        ids, mask, turns = r.input_ids[row], r.loss_mask[row], r.turn_ids[row]
        assert tok.decode(ids[turns == 0]) == plan[0] + tok.eos_token
        assert tok.decode(ids[turns == 1]) == plan[1] + tok.eos_token
        assert torch.all(turns[mask == 0] == -1) and torch.all(mask[turns >= 0] == 1)
        # every token of the instruction turn is in the response, not trained on
        info = tok.decode(ids[r.info_mask[row].bool()], skip_special_tokens=False)
        assert INSTRUCTIONS["math"] in info and info.endswith("<|im_start|>assistant\n")
        first_instr = int(r.info_mask[row].nonzero().min())
        assert torch.all(turns[first_instr:][turns[first_instr:] >= 0] == 1)  # after the instruction: turn 1 only


def test_evaluate_two_attempts_rewards_and_metrics(lm):
    model, tok = lm
    script = Script(tok, PLANS, [INSTRUCTIONS["math"]])
    out = evaluate_two_attempts(model, tok, problems(5), "gsm8k", max_turn_tokens=16, batch_size=3,
                                generation_kwargs={"logits_processor": LogitsProcessorList([script])})
    recs = out["records"]
    assert [r["id"] for r in recs] == [f"p{i}" for i in range(5)]
    assert [(r["attempt_1"], r["attempt_2"]) for r in recs] == [tuple(PLANS[f"[p{i}]"]) for i in range(5)]
    assert [(r["r1"], r["r2"]) for r in recs] == [(0, 1), (1, 0), (1, 1), (0, 0), (0, 1)]
    m = out["metrics"]
    assert (m["accuracy@t1"], m["accuracy@t2"], m["delta(t1,t2)"], m["delta_i->c"], m["delta_c->i"]) == \
        pytest.approx((0.4, 0.6, 0.2, 0.4, 0.2))
    assert recs[0]["prompt"].startswith("<|im_start|>") and "[p0]" in recs[0]["prompt"]


def test_self_refine_grades_the_revision_not_the_critique(lm):
    model, tok = lm
    plans = {"[p0]": ["He has 6.", "The sum is 5, not 6.", "He has 5."],
             "[p1]": ["He has 5.", "Step 2 is right.", "He has 7."]}
    env = self_refine_env(tok, "gsm8k")
    assert env.max_turns == 3 and env.attempt_turns == (0, 2)
    script = Script(tok, plans, [SELF_REFINE_FEEDBACK["math"], SELF_REFINE_REFINE["math"]])
    out = evaluate_two_attempts(model, tok, problems(2), "gsm8k", method="self_refine", max_turn_tokens=16,
                                generation_kwargs={"logits_processor": LogitsProcessorList([script])})
    recs = out["records"]
    assert [r["turns"] for r in recs] == [plans["[p0]"], plans["[p1]"]]
    assert [(r["r1"], r["r2"]) for r in recs] == [(0, 1), (1, 0)]  # critique "5" in p0 is not the attempt
    assert out["metrics"]["delta_i->c"] == 0.5 and out["metrics"]["delta_c->i"] == 0.5


def test_self_refine_turns_close_once_and_mask_both_instructions(lm):
    model, tok = lm
    plans = {"[p0]": ["He has 6.", "Wrong sum.", "He has 5."]}
    env = self_refine_env(tok, "gsm8k")
    script = Script(tok, plans, [SELF_REFINE_FEEDBACK["math"], SELF_REFINE_REFINE["math"]])
    r = rollout(model, tok, [render_problem(tok, problems(1)[0])], env, max_turn_tokens=16, max_response_tokens=600,
                do_sample=False, compute_logprobs=False,
                generation_kwargs={"logits_processor": LogitsProcessorList([script])})
    ids, turns = r.input_ids[0], r.turn_ids[0]
    text = tok.decode(ids[r.attention_mask[0].bool()], skip_special_tokens=False)
    assert "<|im_end|><|im_end|>" not in text  # each attempt's EOS closed its turn; no second end-of-turn
    assert [tok.decode(ids[turns == k]) for k in range(3)] == [p + tok.eos_token for p in plans["[p0]"]]
    info = tok.decode(ids[r.info_mask[0].bool()], skip_special_tokens=False)
    assert SELF_REFINE_FEEDBACK["math"] in info and SELF_REFINE_REFINE["math"] in info
    assert r.counter("turns").tolist() == [3]


def test_evaluate_on_unscripted_tiny_model_agrees_with_the_reward(lm):
    """Greedy on a random model: whatever it writes, r1/r2 are the reward of the recorded attempts."""
    from tasks.math_grading import math_reward

    model, tok = lm
    exs = problems(2)
    out = evaluate_two_attempts(model, tok, exs, "gsm8k", max_turn_tokens=6)
    for r, ex in zip(out["records"], exs):
        assert len(r["turns"]) == 2 and r["attempt_1"] == r["turns"][0]
        assert [r["r1"], r["r2"]] == math_reward([r["attempt_1"], r["attempt_2"]], [ex, ex])


# -- prompts ------------------------------------------------------------------------------------------------

def test_render_problem_prompts(lm):
    _, tok = lm
    ex = {"id": "m", "task": "mbpp", "problem": "Write a function add.", "test_list": ["assert add(1, 2) == 3"],
          "code": "def add(a, b):\n    return a + b"}
    text = render_problem(tok, ex)
    assert "Your code should pass these tests:\n\nassert add(1, 2) == 3" in text
    assert text.endswith("<|im_start|>assistant\n")
    shot = {"id": "s", "task": "gsm8k", "problem": "A has 1.", "answer": "3",
            "solution": "1+2=<<1+2=3>>3\n#### 3"}
    text = render_problem(tok, problems(1)[0], shots=[shot])
    assert "<|im_start|>assistant\n1+2=3\nFinal Answer: The final answer is $3$. I hope it is correct.<|im_end|>" \
        in text
    plain = ProblemFormat(chat=False).render(tok, problems(1)[0], "gsm8k")
    assert "<|im_start|>" not in plain and "[p0]" in plain
    with pytest.raises(ValueError, match="template with a \\{problem\\} field"):
        render_problem(tok, ex, prompt="no field")


# -- data ---------------------------------------------------------------------------------------------------

def test_datamodule_gsm8k_short_slice_and_shots():
    from datamodules.self_correction import SelfCorrectionDataModule, solution_steps

    dm = SelfCorrectionDataModule(task="gsm8k", slice="short", max_steps=2, limit_test=6, limit_train=20,
                                  num_shots=3, batch_size=4)
    dm.setup("fit")
    test, train = dm.rows["test"], dm.rows["train"]
    assert len(test) == 6 and len(train) == 20
    assert all(solution_steps(r) <= 2 for r in test + train + dm.shots)
    assert not {s["id"] for s in dm.shots} & {r["id"] for r in train}
    # the whole training slice: 1,961 GSM8K train problems have 2 solution lines (none has fewer), less 3 shots
    full_train = SelfCorrectionDataModule(task="gsm8k", slice="short", max_steps=2, num_shots=3)
    full_train.setup("fit")
    assert len(full_train.rows["train"]) == 1961 - 3
    assert not {s["id"] for s in full_train.shots} & {r["id"] for r in full_train.rows["train"]}
    # the slice keeps file order: the first kept test problem is the first with <= 2 solution lines
    from tasks.loaders import load_gsm8k

    full = load_gsm8k(ROOT / "data/gsm8k/test.jsonl")
    assert test[0]["id"] == next(r["id"] for r in full if solution_steps(r) <= 2)
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, list) and batch[0]["id"] == test[0]["id"] and len(batch) == 6
    assert len(dm.problem_format.shots) == 3


def test_datamodule_mbpp_splits_and_humaneval_has_no_train():
    from datamodules.self_correction import SelfCorrectionDataModule

    dm = SelfCorrectionDataModule(task="mbpp", num_shots=2)
    dm.setup("fit")
    assert len(dm.rows["test"]) == 500 and len(dm.rows["train"]) == 374
    assert {r["task_id"] for r in dm.shots} <= set(range(1, 11))
    assert all(601 <= r["task_id"] <= 974 for r in dm.rows["train"])
    he = SelfCorrectionDataModule(task="humaneval", limit_test=3)
    he.setup("test")
    assert len(he.rows["test"]) == 3
    with pytest.raises(ValueError, match="has no train split"):
        he.train_dataloader()
    with pytest.raises(ValueError, match="unknown slice"):
        SelfCorrectionDataModule(task="gsm8k", slice="tiny")


# -- the evaluation module through the CLI ------------------------------------------------------------------

SC_CONFIGS = sorted(str(p) for p in (ROOT / "configs").glob("self_correct_*.yaml"))


def test_configs_cover_tasks_and_baselines():
    import yaml

    seen = {(yaml.safe_load(open(p))["data"]["init_args"]["task"], yaml.safe_load(open(p))["model"]["init_args"]["method"])
            for p in SC_CONFIGS}
    for task in ("gsm8k", "math500", "humaneval", "mbpp"):
        assert {(task, "two_attempts"), (task, "self_refine")} <= seen


@pytest.mark.parametrize("config", SC_CONFIGS, ids=lambda p: Path(p).stem)
def test_self_correct_config_runs_on_tiny_model(config, tiny_llama_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train import cli_main

    cli = cli_main(["--config", config, "--model.init_args.lm.name_or_path", tiny_llama_dir,
                    "--model.init_args.max_turn_tokens", "3", "--model.init_args.num_examples", "2",
                    "--data.init_args.limit_test", "3", "--data.init_args.eval_batch_size", "2",
                    "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false"])
    log_dir = Path(cli.trainer.log_dir)
    records = [json.loads(line) for line in open(log_dir / "attempts.jsonl")]
    assert len(records) == 3 and len({r["id"] for r in records}) == 3
    turns = 3 if cli.model.hparams.method == "self_refine" else 2
    assert all(len(r["turns"]) == turns and r["attempt_2"] == r["turns"][-1] for r in records)
    # the logged metrics are those of the written records, and each reward is the task's metric of its attempt
    expected = attempt_metrics([r["r1"] for r in records], [r["r2"] for r in records])
    logged = cli.trainer.callback_metrics
    for k, v in expected.items():
        assert float(logged[f"test/{k}"]) == pytest.approx(v)
    reward = task_reward(cli.datamodule.hparams.task)
    examples = cli.datamodule.rows["test"]
    assert [r["r1"] for r in records] == reward([r["attempt_1"] for r in records], examples)
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    assert any("attempts" in t for t in acc.Tags().get("tensors", [])), "no attempt pairs logged as text"


@pytest.mark.slow
def test_ddp_two_processes_evaluate_every_problem_once(tiny_llama_dir, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from datamodules.self_correction import SelfCorrectionDataModule
    from lightning_modules.self_correct_eval import SelfCorrectEvaluator

    from training.settings import LM

    model = SelfCorrectEvaluator(lm=LM(tiny_llama_dir), max_turn_tokens=2)
    dm = SelfCorrectionDataModule(task="gsm8k", limit_test=5, eval_batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=CSVLogger(tmp_path, name="ddp"),
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, dm)
    files = list(tmp_path.rglob("attempts.jsonl"))
    assert len(files) == 1
    records = [json.loads(line) for line in open(files[0])]
    dm.setup("test")
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in dm.rows["test"])
    assert float(trainer.callback_metrics["test/n"]) == 5


def test_arithmetic_problems_and_their_datamodule():
    import re

    from datamodules.self_correction import SelfCorrectionDataModule
    from tasks.arithmetic import arithmetic_problems

    for op, f in (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)):
        for ex in arithmetic_problems(20, seed=3, digits=3, op=op):
            a, b = map(int, re.fullmatch(rf"What is (\d+) \{op} (\d+)\?", ex["problem"]).groups())
            assert 100 <= a <= 999 and 100 <= b <= 999 and ex["answer"] == str(f(a, b))
    assert arithmetic_problems(5, seed=1) == arithmetic_problems(5, seed=1) != arithmetic_problems(5, seed=2)
    with pytest.raises(ValueError, match="op '/'"):
        arithmetic_problems(1, op="/")
    dm = SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 50}, num_shots=2, limit_test=10)
    dm.setup("fit")
    assert len(dm.rows["test"]) == 10 and len(dm.rows["train"]) == 50 and len(dm.shots) == 2
    assert dm.rows["test"][0]["problem"] != dm.rows["train"][0]["problem"] or \
        dm.rows["test"][1]["problem"] != dm.rows["train"][1]["problem"]  # distinct seeded draws
    assert task_reward("arithmetic")(["5 + 7 = 12.\nFinal Answer: The final answer is $12$. I hope it is correct."],
                                     [{"answer": "12"}]) == [1.0]
