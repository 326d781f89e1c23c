"""The RL core's gradients against values computed by hand: the KL penalty's gradient on a toy categorical for each
estimator and place (METHODS.md 3.2a, docs/rl_kl.md), the update with mini-batches smaller than the rollout batch
and an entropy bonus, and the two-attempt environment's turn boundaries."""

import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rl.envs import TwoAttemptEnv
from rl.kl import default_estimator, kl_estimate
from rl.rollout import rollout
from rl.settings import PolicyLoss, Updates
from test_policy_gradient import PROMPTS, TAU, TEXTS, grads_of, hand_loss, lm, run_update, sample  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# -- the KL penalty's gradient on a toy categorical --------------------------------------------------------------
# pi = softmax(theta) over 5 outcomes, a fixed reference. The expected gradient of a penalty used as the code uses
# it is an exact sum over the outcomes y, each weighted by pi(y) (a sample's weight carries no gradient):
#   a loss term       E_y[ grad k(y) ]                  (k differentiated through log pi(y))
#   in the reward     E_y[ k(y) grad log pi(y) ]        (REINFORCE on r - k; no gradient through k)
# against the closed forms, written without autograd:
#   grad_j KL(pi || ref) = pi_j (log(pi_j / ref_j) - KL(pi || ref))      the papers' regulariser
#   grad_j KL(ref || pi) = pi_j - ref_j                                   the reverse one
THETA = [1.0, 0.2, -0.5, 0.3, -1.0]
REF = [0.1, 0.3, 0.25, 0.15, 0.2]


def _toy():
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    return theta, torch.log(torch.tensor(REF, dtype=torch.float64))


def expected_gradient(estimator: str, in_reward: bool) -> torch.Tensor:
    theta, log_ref = _toy()
    log_pi = torch.log_softmax(theta, 0)
    weights = log_pi.exp().detach()
    k = kl_estimate(log_pi, log_ref, estimator, clamp=None)
    surrogate = (weights * k.detach() * log_pi).sum() if in_reward else (weights * k).sum()
    return torch.autograd.grad(surrogate, theta)[0]


def closed_forms() -> tuple[list[float], list[float]]:
    z = sum(math.exp(t) for t in THETA)
    pi = [math.exp(t) / z for t in THETA]
    kl = sum(p * math.log(p / q) for p, q in zip(pi, REF))
    return [p * (math.log(p / q) - kl) for p, q in zip(pi, REF)], [p - q for p, q in zip(pi, REF)]


def test_toy_closed_forms_differ():
    """The numbers docs/rl_kl.md quotes (pi = [.434, .195, .097, .216, .059], KL(pi || ref) = 0.467)."""
    forward, reverse = closed_forms()
    assert forward == pytest.approx([0.4342, -0.1751, -0.1371, -0.0226, -0.0994], abs=1e-4)
    assert reverse == pytest.approx([0.3340, -0.1050, -0.1532, 0.0655, -0.1413], abs=1e-4)


@pytest.mark.parametrize("in_reward", [False, True])
def test_default_kl_penalty_has_the_papers_gradient(in_reward):
    """PolicyLoss's default estimator for either place has the gradient of beta KL(pi || pi_ref)."""
    forward, _ = closed_forms()
    estimator = PolicyLoss(kl_coef=0.1, kl_in_reward=in_reward).kl_estimator
    assert estimator == default_estimator(in_reward)
    torch.testing.assert_close(expected_gradient(estimator, in_reward), torch.tensor(forward, dtype=torch.float64))


def test_k3_as_a_loss_is_the_reverse_kl_and_k1_as_a_loss_is_nothing():
    forward, reverse = closed_forms()
    torch.testing.assert_close(expected_gradient("k3", False), torch.tensor(reverse, dtype=torch.float64))
    assert (expected_gradient("k3", False) - torch.tensor(forward, dtype=torch.float64)).abs().max() > 0.1
    torch.testing.assert_close(expected_gradient("k2", False), torch.tensor(forward, dtype=torch.float64))
    torch.testing.assert_close(expected_gradient("k1", False), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero expected gradient"):
        PolicyLoss(kl_coef=0.1, kl_estimator="k1", kl_in_reward=False)


def test_methods_default_to_the_papers_kl_gradient(tiny_llama_dir):
    """SCoRe: k1 in each attempt's return; SearchR1: k2 as a loss term (k1 when the KL goes in the reward)."""
    from lightning_modules.score import SCoRe
    from lightning_modules.search_r1 import SearchR1

    from rl.settings import Sampling
    from training.settings import LM

    lm = LM(tiny_llama_dir)
    score = SCoRe(lm, task="gsm8k").loss
    assert (score.kl_estimator, score.kl_in_reward) == ("k1", True)
    search = SearchR1(lm).loss
    assert (search.kl_estimator, search.kl_in_reward, search.kl_coef) == ("k2", False, 0.001)
    ppo = SearchR1(lm, algorithm="ppo", sampling=Sampling(group_size=1), loss=PolicyLoss(kl_coef=0.001, kl_in_reward=True))
    assert ppo.loss.kl_estimator == "k1"
    assert SearchR1(lm, loss=PolicyLoss(kl_coef=0.001, kl_estimator="k3")).loss.kl_estimator == "k3"  # verl's low_var_kl


# -- mini-batches smaller than the rollout batch, with an entropy bonus -----------------------------------------

def hand_entropy(model, r, rows) -> torch.Tensor:
    """Sum over the rows' loss tokens of the policy's entropy at TAU, H = -sum_v p_v log p_v."""
    total = 0.0
    for i in rows:
        n = int(r.attention_mask[i].sum())
        logits = model(input_ids=r.input_ids[i, :n][None]).logits[0, :-1].float() / TAU
        h = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
        total = total + (h * r.loss_mask[i, 1:n].float()).sum()
    return total


def test_mini_batch_gradient_uses_its_own_token_count_and_the_entropy_bonus(lm):  # noqa: F811
    """4 rollouts, mini-batches of 2 (2 optimizer steps, nothing applied in between), micro-batches of 1: the
    gradient of each mini-batch is that of 1/N_tok(mini-batch) sum [ -A rho ] - c * H_mean(mini-batch)."""
    model, tok = lm
    r = sample(model, tok, TEXTS, PROMPTS)
    adv = torch.tensor([1.5, -0.5, 0.25, -1.0])
    coef = 0.3
    cfg = PolicyLoss(entropy_coef=coef)
    seen, _ = run_update(model, r, adv, cfg, Updates(1, 2, 1), generator=torch.Generator().manual_seed(5))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    assert len(seen) == 2
    for step, rows in enumerate((order[:2].tolist(), order[2:].tolist())):
        sub = r.select(torch.tensor(rows))
        assert int(sub.loss_mask.sum()) != int(r.loss_mask.sum()) / 2  # its own count differs from the batch's
        model.zero_grad()
        loss = hand_loss(model, sub, adv[rows]) - coef * hand_entropy(model, r, rows) / int(sub.loss_mask.sum())
        loss.backward()
        for g, e in zip(seen[step], grads_of(model)):
            torch.testing.assert_close(g, e, atol=2e-6, rtol=1e-4)


# -- the two-attempt environment's boundaries --------------------------------------------------------------------

class ForceAttempts(LogitsProcessor):
    """Every row: attempt 1 is ``first`` repeated (past any budget), attempt 2 is ``second`` then EOS."""

    def __init__(self, tok, first: str, second: str):
        self.first = tok(first, add_special_tokens=False)["input_ids"]
        self.second = tok(second, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.calls, self.last, self.start = 0, None, None

    def __call__(self, input_ids, scores):
        if self.last is None or input_ids.shape[1] != self.last + 1:  # a new generate call: the next attempt
            self.calls, self.start = self.calls + 1, input_ids.shape[1]
        self.last = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        plan = self.first if self.calls == 1 else self.second
        out = torch.full_like(scores, float("-inf"))
        out[:, plan[step % len(plan)] if self.calls == 1 else plan[min(step, len(plan) - 1)]] = 0.0
        return out


def test_first_attempt_over_budget_keeps_the_end_of_turn_and_nothing_follows_attempt_two(lm):  # noqa: F811
    """Attempt 1 runs out of its 6-token budget without EOS: the instruction turn must close the assistant turn
    itself (the chat template's end-of-turn token first). Attempt 2 ends the row: no instruction after it."""
    model, tok = lm
    instruction = "Please check the answer."
    env = TwoAttemptEnv.for_chat(tok, instruction)
    assert env.end_of_turn and env.text.startswith(env.end_of_turn)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                     add_generation_prompt=True)
    torch.manual_seed(0)
    r = rollout(model, tok, [prompt], env, max_turn_tokens=6, max_response_tokens=200, temperature=TAU,
                generation_kwargs={"logits_processor": LogitsProcessorList([ForceAttempts(tok, " seven", " Five")])})
    ids, turns = r.input_ids[0], r.turn_ids[0]
    assert int((turns == 0).sum()) == 6 and tok.eos_token_id not in ids[turns == 0].tolist()  # the budget, no EOS
    info = tok.decode(ids[r.info_mask[0].bool()], skip_special_tokens=False)
    assert info.startswith(env.end_of_turn), info          # attempt 1's turn is closed by the instruction text
    assert info.count(instruction) == 1, info               # once, between the attempts
    last = int(r.attention_mask[0].sum()) - 1
    assert turns[last].item() == 1 and ids[last].item() == tok.eos_token_id  # the row ends with attempt 2's EOS
