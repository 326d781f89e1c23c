"""SCoRe's training step through Lightning (rollout, rewards, reference, returns, baseline, update) against the
gradient written by hand from the paper's objective, row by row from the rollout's own tokens.

Crafted so that each plausible one-line mistake of the module shows: two problems with prompts of UNEQUAL length,
G = 2 samples each, rewards that differ within and across problems, sampling at temperature 0.7, a policy that
differs from the reference (the base), beta1 != beta2, and the KL in each attempt's return (the default: k1) or as
a loss term (k2). The hand computation groups rows by their prompt (not by position) and computes the reference's
log-probs itself from each row's unpadded tokens at the sampling temperature."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from lightning_modules.score import SCoRe
from rl.score import Objective
from rl.self_correction import ProblemFormat
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from training.settings import LM

pytestmark = pytest.mark.usefixtures("one_thread")
TAU, BETA1, BETA2 = 0.7, 0.2, 0.5
PROBLEMS = [{"id": "a", "task": "gsm8k", "problem": "Add 2 and 5.", "answer": "7"},
            {"id": "b", "task": "gsm8k", "problem": "What is the sum of four and five, as a number?", "answer": "9"}]
FIRST = [" 7", " 3", " 9", " 1"]     # rows 0, 1: problem a; rows 2, 3: problem b
SECOND = [" 7", " 2", " 4", " 9"]


def answer_reward(responses, examples):
    return [float(r.strip() == e["answer"]) for r, e in zip(responses, examples)]


class ForceTwoAttempts(LogitsProcessor):
    """Row i: attempt 1 is first[i], attempt 2 second[i], each then EOS (a new generate call = the next attempt)."""

    def __init__(self, tok, first=FIRST, second=SECOND):
        self.plans = [[tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
                      for texts in (first, second)]
        self.calls, self.last, self.start = 0, None, None

    def __call__(self, input_ids, scores):
        if self.last is None or input_ids.shape[1] != self.last + 1:
            self.calls, self.start = self.calls + 1, input_ids.shape[1]
        self.last = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        for i, plan in enumerate(self.plans[min(self.calls, 2) - 1][:input_ids.shape[0]]):
            out[i, plan[min(step, len(plan) - 1)]] = 0.0
        return out


class RecordingSGD(torch.optim.SGD):
    """lr 0: records the gradient of the one step and leaves the weights (the rollout's policy) as they are."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


class Recorded(SCoRe):
    def configure_model(self):
        fresh = self.policy is None
        super().configure_model()
        if fresh:  # the policy moves away from the base (the copy-mode reference), the same way every run
            g = torch.Generator().manual_seed(3)
            with torch.no_grad():
                for p in self.policy.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)

    def sample(self, prompts):
        self.rollouts = super().sample(prompts)
        return self.rollouts


def run_step(model_dir, tok, baseline="rloo", kl_in_reward=True):
    force = LogitsProcessorList([ForceTwoAttempts(tok)])
    model = Recorded(LM(model_dir), stage="I", task="gsm8k", reward=answer_reward, instruction="Check it.",
                     sampling=Sampling(group_size=2, max_turn_tokens=4, max_response_tokens=40, temperature=TAU,
                                       generation_kwargs={"logits_processor": force}),
                     objective=Objective(beta1=BETA1, beta2=BETA2, baseline=baseline),
                     loss=PolicyLoss(aggregation="seq-mean-token-sum", kl_in_reward=kl_in_reward),
                     updates=Updates(micro_batch_size=8, max_grad_norm=None), log_samples=SampleLog(count=0),
                     optimizer=RecordingSGD)
    model.format = ProblemFormat(prompt="{problem}", chat=False)
    torch.manual_seed(0)
    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, DataLoader(PROBLEMS, batch_size=2, collate_fn=lambda rows: rows))
    return model


def compact(r, i):
    """Row i's real tokens (the rollout may leave masked gaps between turns), its loss mask and turn ids."""
    keep = r.attention_mask[i].bool()
    return r.input_ids[i][keep], r.loss_mask[i][keep][1:].bool(), r.turn_ids[i][keep][1:]


def logprobs(model, ids):
    logits = model(input_ids=ids[None]).logits[0, :-1].float() / TAU
    return torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]


def hand_gradient(model, base, tok, baseline: str, kl_in_reward: bool) -> list[torch.Tensor]:
    """-1/N sum_i sum_t [A_it sum_{y in attempt t} log pi(y)]  (+ 1/N sum beta_t k2 as a loss term), with
    Stage I's returns [0, r(y2)] (minus beta_t sum k1 over attempt t in the reward), the baseline over the other
    samples of the same problem (rloo) or all of them (group_mean); attempt 1's KL weight beta2, attempt 2's beta1."""
    r, policy = model.rollouts, model.policy
    prompts = [tok.decode(r.input_ids[i, :r.prompt_lengths[i]]) for i in range(len(r))]
    answers = [next(p["answer"] for p in PROBLEMS if p["problem"] in prompt) for prompt in prompts]
    beta = [BETA2, BETA1]
    returns, lps, refs, masks = [], [], [], []
    for i in range(len(r)):
        ids, mask, turns = compact(r, i)
        lp = logprobs(policy, ids)
        with torch.no_grad():
            ref = logprobs(base, ids)
        second = tok.decode(ids[1:][mask & (turns == 1)], skip_special_tokens=True)
        ret = [0.0, float(second.strip() == answers[i])]
        if kl_in_reward:
            ret = [ret[t] - beta[t] * (lp.detach() - ref)[mask & (turns == t)].sum().item() for t in (0, 1)]
        returns.append(ret)
        lps.append(lp), refs.append(ref), masks.append((mask, turns))
    policy.zero_grad()
    total = 0.0
    for i in range(len(r)):
        group = [j for j in range(len(r)) if prompts[j] == prompts[i]]
        mask, turns = masks[i]
        for t in (0, 1):
            others = [returns[j][t] for j in group if j != i]
            b = sum(others) / len(others) if baseline == "rloo" else sum(returns[j][t] for j in group) / len(group)
            on = mask & (turns == t)
            total = total - (returns[i][t] - b) * lps[i][on].sum()
            if not kl_in_reward:
                total = total + beta[t] * (0.5 * (refs[i] - lps[i]) ** 2)[on].sum()
    (total / len(r)).backward()
    return [p.grad.detach().clone() for p in policy.parameters() if p.requires_grad]


@pytest.mark.parametrize("baseline,kl_in_reward", [("rloo", True), ("group_mean", True), ("rloo", False)])
def test_score_step_applies_the_papers_gradient(tiny_llama_dir, baseline, kl_in_reward):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = run_step(tiny_llama_dir, tok, baseline=baseline, kl_in_reward=kl_in_reward)
    r = model.rollouts
    assert len(set(r.prompt_lengths)) == 2                          # prompts of unequal length
    assert [t[0].strip() for t in r.turn_texts] == [x.strip() for x in FIRST]
    assert model.reference.mode == "copy"
    (seen,) = model.optimizers().optimizer.seen
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    expected = hand_gradient(model, base, tok, baseline, kl_in_reward)
    assert any(e.abs().sum() > 0 for e in expected)
    for g, e in zip(seen, expected):
        torch.testing.assert_close(g, e, atol=2e-6, rtol=1e-4)
