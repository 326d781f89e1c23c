"""SCoRe (rl.score, lightning_modules.score): the Stage I / Stage II objectives against values and gradients
computed by hand from the paper's equations, the SCoRe module through the CLI with checkpoint, resume and
Stage II from Stage I, and a toy task whose optimum is known (attempt 2 learns to fix attempt 1's error)."""

import copy
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from generation.logprobs import sequence_logprobs
from generation.tokens import TokenBatch
from lightning_modules.score import SCoRe
from rl.advantages import per_turn
from rl.rollout import Rollouts
from rl.score import (Objective, attempt_rewards, edit_distance_ratio, selection_reward, token_values, turn_advantages,
                      turn_kl_coefs, turn_kl_penalty, turn_returns)
from rl.self_correction import ProblemFormat
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from training.settings import LM
from rl.update import update
from train import cli_main

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 20

# Two samples (G = 2) of one problem: prompt P, attempt 1 (loss), instruction I (no loss), attempt 2 (loss).
# Row 0 goes wrong -> right (i->c), row 1 right -> wrong (c->i). Token ids are arbitrary; lengths differ.
P, I = [5, 6, 7], [40, 41]
Y1 = [[11, 12], [13, 14, 15]]
Y2 = [[21, 22, 23], [24]]
R1, R2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])


def two_example_batch() -> TokenBatch:
    return TokenBatch.from_segments([[(P, 0), (Y1[i], 1), (I, 0), (Y2[i], 1)] for i in range(2)], pad_id=0,
                                    turns=True)


def expected_tokens(a1: list[float], a2: list[float]) -> torch.Tensor:
    """(2, L): a1[i] on row i's attempt-1 tokens, a2[i] on its attempt-2 tokens, 0 on prompt/instruction/padding."""
    rows = [[0.0] * len(P) + [a1[i]] * len(Y1[i]) + [0.0] * len(I) + [a2[i]] * len(Y2[i]) for i in range(2)]
    width = max(map(len, rows))
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


def test_stage_two_returns_bonus_and_rloo_advantages_by_hand():
    b = two_example_batch()
    # R_1 = r(y1); R_2 = r(y2) + 10 (r(y2) - r(y1)): i->c gets 1 + 10 = 11, c->i gets 0 - 10 = -10
    returns = turn_returns(R1, R2, "II", alpha=10.0)
    assert returns.tolist() == [[0.0, 11.0], [1.0, -10.0]]
    # RLOO per attempt with G = 2: A_i = R_i - R_other
    adv = turn_advantages(returns, group_size=2, baseline="rloo")
    assert adv.tolist() == [[-1.0, 21.0], [1.0, -21.0]]
    tok = token_values(adv, b.loss_mask, b.turn_ids)
    assert torch.equal(tok, expected_tokens([-1.0, 1.0], [21.0, -21.0]))
    # group-mean baseline (sample included): A = R - mean
    assert turn_advantages(returns, 2, "group_mean").tolist() == [[-0.5, 10.5], [0.5, -10.5]]


def test_bonus_sign_follows_the_flip():
    r1 = torch.tensor([0.0, 1.0, 1.0, 0.0])  # i->c, c->i, c->c, i->i
    r2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    second = turn_returns(r1, r2, "II", alpha=2.0)[:, 1]
    assert second.tolist() == [1.0 + 2.0, 0.0 - 2.0, 1.0, 0.0]
    assert turn_returns(r1, r2, "II", alpha=0.0)[:, 1].tolist() == r2.tolist()  # no shaping: r(y2) itself


def test_stage_one_returns_only_on_attempt_two_and_beta2_only_on_attempt_one():
    b = two_example_batch()
    returns = turn_returns(R1, R2, "I", alpha=10.0)
    assert returns.tolist() == [[0.0, 1.0], [0.0, 0.0]]  # no reward term on attempt 1, no bonus in Stage I
    tok = token_values(turn_advantages(returns, 2), b.loss_mask, b.turn_ids)
    assert torch.equal(tok, expected_tokens([0.0, 0.0], [1.0, -1.0]))
    beta1, beta2 = 0.01, 0.25
    assert turn_kl_coefs("I", beta1, beta2) == [beta2, beta1]
    assert turn_kl_coefs("II", beta1, beta2) == [beta1, beta1]
    coef = per_turn(turn_kl_coefs("I", beta1, beta2), b.loss_mask, b.turn_ids)  # what rl.update applies
    assert torch.allclose(coef, expected_tokens([beta2, beta2], [beta1, beta1]))
    # single-turn ablation: attempt 1's own reward, beta1
    assert turn_returns(R1, None, "single_turn").tolist() == [[0.0], [1.0]]
    assert turn_kl_coefs("single_turn", beta1, beta2) == [beta1]


def test_baselines_stay_within_each_problem_group():
    # 2 problems x G = 2; problem B's rewards must not enter problem A's baseline
    r1, r2 = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = turn_advantages(turn_returns(r1, r2, "II", alpha=1.0), group_size=2)
    assert adv.tolist() == [[0.0, 2.0], [0.0, -2.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="group_size"):
        turn_advantages(turn_returns(r1, r2, "II"), group_size=3)


def test_kl_penalty_in_reward_sums_each_attempt_separately():
    b = two_example_batch()
    old = torch.zeros(b.input_ids.shape)
    ref = torch.zeros(b.input_ids.shape)
    ref[b.turn_ids == 0] = -0.5   # log pi_ref - log pi_old = -0.5 on attempt 1 tokens, -0.2 on attempt 2
    ref[b.turn_ids == 1] = -0.2
    penalty = turn_kl_penalty(old, ref, b.loss_mask, b.turn_ids, [0.1, 0.01], "k1")
    # k1 = log pi_old - log pi_ref per token; row 0: 2 and 3 tokens, row 1: 3 and 1
    assert torch.allclose(penalty, torch.tensor([[0.1 * 2 * 0.5, 0.01 * 3 * 0.2], [0.1 * 3 * 0.5, 0.01 * 1 * 0.2]]))


def test_attempt_rewards_grades_a_missing_second_attempt_as_empty():
    reward = lambda rs, exs: [1.0 if r == e["answer"] else 0.0 for r, e in zip(rs, exs)]  # noqa: E731
    r1, r2 = attempt_rewards(reward, [["4", "5"], ["5"]], [{"answer": "5"}, {"answer": "5"}])
    assert r1.tolist() == [0.0, 1.0] and r2.tolist() == [1.0, 0.0]
    r1, r2 = attempt_rewards(reward, [["5"], ["4"]], [{"answer": "5"}] * 2, attempts=1)
    assert r1.tolist() == [1.0, 0.0] and r2 is None


def test_edit_distance_ratio():
    assert edit_distance_ratio(["same text", "abc", ""], ["same text", "abd", "xy"]) == [0.0, pytest.approx(1 / 3), 1.0]


def test_selection_reward_counts_steps_before_the_first_as_zero():
    nan = float("nan")
    # a window of 4 steps: after step 1 (accuracy 0.5) the lucky first step scores 0.5 / 4, not 0.5
    assert selection_reward(torch.tensor([nan, nan, nan, 0.5])).item() == pytest.approx(0.125)
    # so a full window of steady 0.25 beats it
    assert selection_reward(torch.tensor([0.25, 0.25, 0.25, 0.25])).item() == pytest.approx(0.25)
    assert selection_reward(torch.tensor([0.0, 0.5, 0.25, 0.75])).item() == pytest.approx(0.375)


# -- the objective's gradient through the RL core --------------------------------------------------------------

@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


def perturbed(model, seed=1, scale=0.05):
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ref


def hand_logprobs(model, ids, tau):
    logits = model(input_ids=ids[None]).logits[0, :-1].float() / tau
    return torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]


@pytest.mark.parametrize("stage", ["I", "II"])
def test_update_gradient_is_the_paper_objective(lm, stage):
    """rl.update with SCoRe's token advantages and per-attempt KL coefficients (seq-mean-token-sum) has the
    gradient of  -1/N sum_i [ sum_t A_{i,t} log pi(y_t|x_t) - sum_tokens beta_turn k3 ],  written row by row."""
    model, _ = lm
    model = copy.deepcopy(model)
    ref_model = perturbed(model)
    tau, beta1, beta2 = 0.7, 0.05, 0.5
    b = two_example_batch()
    old = sequence_logprobs(model, b.input_ids, b.attention_mask, temperature=tau).logprobs.detach() * b.loss_mask
    ref = sequence_logprobs(ref_model, b.input_ids, b.attention_mask, temperature=tau).logprobs.detach() * b.loss_mask
    r = Rollouts(b, old, [len(P)] * 2, ["", ""], [["", ""], ["", ""]])
    adv_turn = turn_advantages(turn_returns(R1, R2, stage, alpha=10.0), 2)
    adv = token_values(adv_turn, b.loss_mask, b.turn_ids)
    coefs = turn_kl_coefs(stage, beta1, beta2)
    cfg = PolicyLoss(aggregation="seq-mean-token-sum", kl_coef=coefs, kl_estimator="k3")
    grads = []
    update(model, r, adv, cfg, Updates(1, None, 1), lambda loss: loss.backward(),
           lambda: grads.append([p.grad.clone() for p in model.parameters()]), temperature=tau, ref_logprobs=ref)

    model.zero_grad()
    total = 0.0
    for i in range(2):
        n = int(b.attention_mask[i].sum())
        ids = b.input_ids[i, :n]
        lp = hand_logprobs(model, ids, tau)
        turns = b.turn_ids[i, 1:n]
        for t in (0, 1):
            on = turns == t
            total = total - adv_turn[i, t] * lp[on].sum()                      # policy gradient, gamma = 0
            log_ratio = ref[i, 1:n][on] - lp[on]
            total = total + coefs[t] * (torch.exp(log_ratio) - 1 - log_ratio).sum()  # beta_t KL of attempt t
    (total / 2).backward()
    for g, p in zip(grads[0], model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4)


# -- the module ---------------------------------------------------------------------------------------------

def write_gsm8k(path, n, start=0):
    rows = [{"question": f"Tom has {i} apples and buys {i + 1} more. How many apples does he have?",
             "answer": f"Tom has {i} + {i + 1} = {2 * i + 1} apples.\n#### {2 * i + 1}"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm8k_files(tmp_path):
    return write_gsm8k(tmp_path / "train.jsonl", 4), write_gsm8k(tmp_path / "test.jsonl", 2, start=50)


def parity_reward(responses, examples):
    """A reward a random tiny model earns half the time (the GSM8K checker would give it 0 on every sample)."""
    return [float(len(r) % 2 == 0) for r in responses]


_CALLS = [0]


def second_attempt_right(responses, examples):
    """0 for every first attempt, 1 for every second (the module grades attempt 1, then attempt 2)."""
    _CALLS[0] += 1
    return [float(_CALLS[0] % 2 == 0)] * len(responses)


def cli_args(tiny_llama_dir, train, test, root, stage="I", steps=2, extra=()):
    return ["--model", "lightning_modules.score.SCoRe", "--model.lm.name_or_path", tiny_llama_dir,
            "--model.stage", stage, "--model.sampling.group_size", "2", "--model.sampling.max_turn_tokens", "4",
            "--model.sampling.max_response_tokens", "200", "--model.sampling.temperature", "0.7",
            "--model.updates.micro_batch_size", "4", "--model.objective.beta1", "0.01", "--model.objective.beta2", "0.1",
            "--model.log_samples.count", "1",
            "--model.reward", "test_score.parity_reward", "--model.optimizer", "torch.optim.AdamW",
            "--model.optimizer.lr", "0.01", *extra,
            "--data", "datamodules.self_correction.SelfCorrectionDataModule", "--data.task", "gsm8k",
            "--data.train_file", str(train), "--data.test_file", str(test), "--data.batch_size", "2",
            "--data.limit_val", "2", "--data.eval_batch_size", "2",
            "--trainer.max_steps", str(steps), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "2",
            "--trainer.default_root_dir", str(root)]


def test_fit_logs_per_attempt_metrics_then_stage_two_starts_from_stage_one(tiny_llama_dir, gsm8k_files, tmp_path):
    train, test = gsm8k_files
    cli = cli_main(["fit", *cli_args(tiny_llama_dir, train, test, tmp_path / "s1"), "--trainer.logger", "false"])
    m = cli.trainer.callback_metrics
    for key in ("train/acc_t1", "train/acc_t2", "train/delta", "train/delta_i2c", "train/delta_c2i", "train/reward_t1",
                "train/reward_t2", "train/kl_t1", "train/kl_t2", "train/kl", "train/edit_distance", "train/selection_reward",
                "val/acc_t1", "val/acc_t2", "val/delta", "val/delta_i2c", "val/delta_c2i", "val/edit_distance",
                "train/reward_health/math_errors", "train/reward_health/math_timeouts"):
        assert key in m and torch.isfinite(m[key]), key
    assert m["train/reward_t1"] == 0.0  # Stage I: attempt 1 has no task-reward term
    s1 = cli.model
    assert s1.reference.mode == "copy"  # full fine-tuning: the base is a frozen copy
    ckpt = cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path
    assert ckpt

    # Stage II from Stage I's checkpoint: the policy starts at Stage I's weights, the reference stays the base
    s2 = SCoRe(LM(tiny_llama_dir), stage="II", task="gsm8k", init_from=ckpt)
    s2.configure_model()
    for p, q in zip(s2.policy.parameters(), s1.policy.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(s2.reference.model.parameters(), s1.reference.model.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(s2.policy.parameters(), s2.reference.model.parameters()))
    with pytest.raises(FileNotFoundError, match="init_from: no checkpoint"):
        SCoRe(LM(tiny_llama_dir), stage="II", task="gsm8k", init_from=str(tmp_path / "nope.ckpt")).configure_model()


def test_checkpoint_selection_follows_the_second_attempt(tiny_llama_dir, gsm8k_files, tmp_path):
    train, test = gsm8k_files
    _CALLS[0] = 0
    cli = cli_main(["fit", *cli_args(tiny_llama_dir, train, test, tmp_path, steps=1,
                                     extra=["--model.reward", "test_score.second_attempt_right",
                                            "--model.selection_window", "4"]),
                    "--trainer.logger", "false", "--trainer.limit_val_batches", "0"])
    m = cli.trainer.callback_metrics
    assert m["train/acc_t1"].item() == 0.0 and m["train/acc_t2"].item() == 1.0
    # one step of attempt-2 accuracy 1 in a window of 4: 1/4
    assert m["train/selection_reward"].item() == pytest.approx(0.25)


def test_two_process_fsdp2_default_run_fits_and_tests(tiny_llama_dir, gsm8k_files, tmp_path):
    """`train.py` with the FSDP2 CPU preset, 2 processes (Lightning starts the second): fit, then the
    two-attempt test of the best (sharded) checkpoint over both ranks' problems."""
    import os

    from conftest import ROOT, run_train_py

    train, test = gsm8k_files
    proc = run_train_py([*cli_args(tiny_llama_dir, train, test, tmp_path / "run"), "--trainer.logger", "false",
                         "--config", "configs/trainer/fsdp2_cpu.yaml",
                         "--trainer.val_check_interval", "1"],   # 4 training problems: one batch of 2 per rank
                        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    assert "test/acc_t2" in proc.stdout and "Testing checkpoint" in proc.stdout + proc.stderr


def test_single_turn_ablation_samples_one_attempt_and_tests_two(tiny_llama_dir, gsm8k_files, tmp_path):
    train, test = gsm8k_files
    cli = cli_main(["fit", *cli_args(tiny_llama_dir, train, test, tmp_path / "st", stage="single_turn"),
                    "--trainer.logger", "false"])
    m = cli.trainer.callback_metrics
    assert "train/reward_t1" in m and "train/reward_t2" not in m and "train/acc_t2" not in m
    assert {"val/acc_t1", "val/acc_t2", "val/delta"} <= set(m)


def test_resume_equals_an_uninterrupted_run(tiny_llama_dir, gsm8k_files, tmp_path):
    """4 steps in one run == 3 steps, a checkpoint, a stop, and the 4th step resumed from it (LoRA Stage II).
    Two batches per epoch, so the checkpoint is mid-epoch: the loader's position and the RNG (sampling) come
    back with it (tests/test_resume.py)."""
    from test_resume import full_and_resumed

    train, test = gsm8k_files
    args = ["--model", "lightning_modules.score.SCoRe", "--model.lm.name_or_path", tiny_llama_dir,
            "--model.stage", "II", "--model.lm.lora", '{"r": 4, "alpha": 8, "dropout": 0.0}',
            "--model.sampling.group_size", "2", "--model.sampling.max_turn_tokens", "4",
            "--model.sampling.max_response_tokens", "60", "--model.log_samples.count", "0",
            "--model.instruction", "Fix it.",
            "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.05",
            "--model.reward", "test_score.parity_reward",
            "--data", "datamodules.self_correction.SelfCorrectionDataModule", "--data.task", "gsm8k",
            "--data.train_file", str(train), "--data.test_file", str(test), "--data.batch_size", "2",
            "--data.prompt", "{problem}",
            "--seed_everything", "3", "--trainer.accelerator", "cpu",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0"]
    full, resumed = full_and_resumed(args, total=4, stop=3, tmp_path=tmp_path)
    assert resumed.model.reference.mode == "adapters_off"
    moved = [n for n, p in full.model.policy.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved, "the adapters never moved"
    for (n, p), q in zip(full.model.policy.named_parameters(), resumed.model.policy.parameters()):
        assert torch.equal(p, q), n


# -- toy task: attempt 1 is forced wrong; attempt 2 can learn to fix it ----------------------------------------

class WrongThenChoose(LogitsProcessor):
    """Attempt 1 (no instruction in the context yet) is forced to ``wrong``; attempt 2 chooses between ``right``
    and ``wrong`` with the policy's own probabilities; both then end with EOS."""

    def __init__(self, tokenizer, marker, right=" A", wrong=" B"):
        self.tok, self.marker = tokenizer, marker
        self.right, self.wrong = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in (right, wrong))
        self.eos, self.start, self.last, self.second = tokenizer.eos_token_id, None, None, False

    def __call__(self, input_ids, scores):
        if self.last is None or input_ids.shape[1] != self.last + 1:  # a new generate call (a new prompt or turn)
            self.start = input_ids.shape[1]
            self.second = self.marker in self.tok.decode(input_ids[0])
        self.last = input_ids.shape[1]
        out = torch.full_like(scores, float("-inf"))
        if input_ids.shape[1] > self.start:
            out[:, self.eos] = 0.0
        elif self.second:
            out[:, [self.right, self.wrong]] = scores[:, [self.right, self.wrong]]
        else:
            out[:, self.wrong] = 0.0
        return out


def letter_reward(responses, examples):
    return [1.0 if r.strip() == "A" else 0.0 for r in responses]


@pytest.mark.slow
def test_second_attempt_learns_to_fix_a_forced_first_attempt_error(tiny_llama_dir):
    """Known optimum: Acc@t1 = 0 (forced), Acc@t2 = 1, Delta_i->c = 1. Stage I reaches it from ~0.5."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    processor = WrongThenChoose(tok, "Fix it")
    model = SCoRe(LM(tiny_llama_dir), stage="I", task="gsm8k", reward=letter_reward, instruction="Fix it.",
                  objective=Objective(beta1=0.0, beta2=0.1), log_samples=SampleLog(count=0),
                  sampling=Sampling(group_size=4, max_turn_tokens=2, max_response_tokens=60, temperature=1.0,
                                    generation_kwargs={"logits_processor": LogitsProcessorList([processor])}),
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    model.format = ProblemFormat(prompt="{problem}")  # short prompts: the test's time is the vocabulary-sized logits
    problems = [{"id": f"p{i}", "task": "gsm8k", "problem": f"Pick a letter ({i}).", "answer": "A"} for i in range(2)]
    loader = DataLoader(problems, batch_size=2, collate_fn=lambda rows: rows)
    history = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            history.append(float(trainer.callback_metrics["train/acc_t2"]))

    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(model, loader)
    assert sum(history[:3]) / 3 < 0.9
    assert sum(history[-3:]) / 3 >= 0.95, history
    # greedy two-attempt evaluation (with the same constraint on the attempts)
    out = trainer.test(model, DataLoader(problems, batch_size=2, collate_fn=lambda rows: rows), verbose=False)[0]
    assert out["test/acc_t1"] == 0.0 and out["test/acc_t2"] == 1.0 and out["test/delta_i2c"] == 1.0


def test_reward_health_counts_what_decided_a_reward_other_than_the_answer():
    """Errors and deadlines of the math grader and the sandbox reach the counts SCoRe logs (train/reward_health)."""
    from tasks.math_grading import GRADING_ERRORS, GRADING_TIMEOUTS
    from tasks.sandbox import REWARD_STATS
    from rl.self_correction import reward_health

    before = reward_health()
    GRADING_ERRORS["TypeError"] += 2
    GRADING_TIMEOUTS["sample_deadline"] += 3
    REWARD_STATS["exception"] += 5
    REWARD_STATS["timeout"] += 7
    try:
        after = reward_health()
        assert {k: after[k] - before[k] for k in after} == {"math_errors": 2.0, "math_timeouts": 3.0,
                                                              "code_exceptions": 5.0, "code_timeouts": 7.0}
    finally:
        GRADING_ERRORS["TypeError"] -= 2
        GRADING_TIMEOUTS["sample_deadline"] -= 3
        REWARD_STATS["exception"] -= 5
        REWARD_STATS["timeout"] -= 7
