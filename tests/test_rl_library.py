"""rl library: rewards, advantages, KL estimators and losses against values computed by hand."""

import math

import pytest
import torch

from rl.advantages import (gae, grpo_advantages, last_token_positions, per_turn, place_rewards, reinforce_advantages,
                           rloo_advantages, whiten)
from rl.kl import kl_estimate
from rl.losses import aggregate, clipped_policy_loss, entropy_from_logits, logprobs_from_logits, value_loss
from tasks.qa_rewards import F1, ExactMatch, combined_reward, em_reward, extract_answer, f1_reward, format_reward


def ex(*answers):
    return [{"answers": list(a)} for a in answers]


# -- rewards ----------------------------------------------------------------------------------------
def test_extract_answer_takes_the_last_complete_answer_of_the_response():
    assert extract_answer("<think>x</think><answer> Paris </answer>") == "Paris"
    assert extract_answer("<answer>Lyon</answer> no wait <answer>Paris</answer>") == "Paris"
    assert extract_answer("I think it is Paris") is None
    assert extract_answer("<answer>Paris") is None                     # unterminated
    assert extract_answer("<answer>two\nlines</answer>") == "two\nlines"


def test_em_reward_ignores_the_prompts_example_answer():
    prompt = "Example: <answer>Beijing</answer>\nQuestion: capital of France?"
    response = "<search>capital of france</search><information>...</information>I am not sure."
    # Search-R1's reference extracts from prompt+response and would score the example's 'Beijing';
    # the reward sees the response alone, which has no answer -> 0.
    assert extract_answer(prompt + response) == "Beijing"
    assert em_reward([response], [{"answers": ["Beijing"]}]) == [0.0]


def test_em_reward_uses_squad_normalisation():
    # "The  Eiffel-Tower!" -> lower "the  eiffel-tower!" -> drop punctuation "the  eiffeltower" -> drop article -> "eiffeltower"
    responses = ["<answer>The  Eiffel-Tower!</answer>", "<answer>an apple</answer>", "<answer>Paris, France</answer>"]
    assert em_reward(responses, ex(["eiffeltower"], ["Apple"], ["Paris"])) == [1.0, 1.0, 0.0]


def test_f1_reward_by_hand():
    # pred "paris france" vs gold "paris": common 1, precision 1/2, recall 1/1 -> F1 = 2*0.5*1/1.5 = 2/3
    # second: no answer -> 0; third: best of golds, "the big apple" -> "big apple" vs "new york" (0) / "big apple" (1)
    r = f1_reward(["<answer>Paris, France</answer>", "Paris", "<answer>the Big Apple</answer>"],
                  ex(["Paris"], ["Paris"], ["New York", "big apple"]))
    assert r == pytest.approx([2 / 3, 0.0, 1.0])


def test_format_reward_and_combination():
    good = "<think>a</think>\n<search>q</search>\n\n<information>d</information>\n\n<answer>x</answer>"
    assert format_reward([good, "<answer>x</answer>", "x <answer>x</answer>", "<answer>x</answer> tail"]) == \
        [1.0, 1.0, 0.0, 0.0]
    # EM 1 + 0.2 * format 1 = 1.2 ; EM 0 + 0.2 * format 1 = 0.2
    assert combined_reward([good, "<answer>y</answer>"], ex(["x"], ["x"]), "em", 0.2) == pytest.approx([1.2, 0.2])
    # the callable classes a config names (SearchR1's reward): F1 2/3 + 0.5 * format 1 (as in test_f1_reward_by_hand)
    assert F1(format_weight=0.5)(["<answer>Paris, France</answer>"], ex(["Paris"])) == pytest.approx([2 / 3 + 0.5])
    assert ExactMatch()([good], ex(["x"])) == [1.0]


def test_reward_rejects_bad_answers():
    with pytest.raises(ValueError, match=r"examples\[0\]\['answers'\]"):
        em_reward(["<answer>x</answer>"], [{"answers": "x"}])
    with pytest.raises(ValueError, match=r"examples\[0\] must be a dict with an 'answers' field"):
        em_reward(["<answer>x</answer>"], [["x"]])
    with pytest.raises(ValueError, match="1 responses but 2"):
        em_reward(["a"], ex(["a"], ["b"]))


def test_rewards_take_whole_examples():
    # extra fields (a math/code task's "answer"/"tests", the question) ride along untouched
    rows = [{"question": "q", "answers": ["Paris"], "id": 3}, {"answers": ["Rome"], "tests": ["assert 1"]}]
    assert f1_reward(["<answer>Paris</answer>", "<answer>Rome, Italy</answer>"], rows) == pytest.approx([1.0, 2 / 3])


# -- advantages -------------------------------------------------------------------------------------
def test_grpo_advantages_by_hand():
    # group 1: r = [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735
    #          A = +-0.5 / 0.57735 = +-0.866025
    # group 2: r = [0, 0, 0, 0]: mean 0, std 0 -> A = 0 / (0 + eps) = 0
    r = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 0])
    a = grpo_advantages(r, group_size=4)
    s = 0.5 / math.sqrt(1 / 3)
    assert a.tolist() == pytest.approx([s, -s, -s, s, 0, 0, 0, 0], abs=1e-5)
    # without std normalisation: A = r - mean = [0.5, -0.5, -0.5, 0.5, 0...]
    a = grpo_advantages(r, group_size=4, normalize_std=False)
    assert a.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="group_size=3"):
        grpo_advantages(r, group_size=3)


def test_rloo_and_reinforce_by_hand():
    # group [1, 0, 0, 1]: the baseline of sample 0 is mean(0, 0, 1) = 1/3 -> A0 = 2/3; sample 1: mean(1, 0, 1) -> -2/3
    # group [3, 1]: A = 3 - 1 = 2 and 1 - 3 = -2
    r = torch.tensor([1.0, 0, 0, 1])
    assert rloo_advantages(r, 4).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert rloo_advantages(torch.tensor([3.0, 1.0]), 2).tolist() == pytest.approx([2.0, -2.0])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(r, 1)
    # REINFORCE: batch mean baseline (rewards [2, 0, 1] -> mean 1) or a given one (a greedy rollout's reward)
    assert reinforce_advantages(torch.tensor([2.0, 0.0, 1.0])).tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert reinforce_advantages(torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0])).tolist() == pytest.approx([1.5, -1.0])


def test_rewards_go_on_the_last_generated_token_not_on_padding():
    # row 0: generated tokens at columns 2, 3 (then padding); row 1: generated at 1, then an information
    # token (mask 0) at 2, generated at 3, 4; right padding after each row.
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0]])
    placed = place_rewards(torch.tensor([1.0, 2.0]), mask)
    assert placed.tolist() == [[0, 0, 0, 1.0, 0, 0], [0, 0, 0, 0, 2.0, 0]]
    assert last_token_positions(mask).tolist() == [3, 4]


def test_rewards_and_coefficients_per_turn():
    # turn ids: row 0 has turn 0 at columns 1-2 and turn 1 at 4-5; row 1 only turn 0 at column 1
    mask = torch.tensor([[0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 0]])
    turns = torch.tensor([[-1, 0, 0, -1, 1, 1], [-1, 0, -1, -1, -1, -1]])
    placed = place_rewards(torch.tensor([[0.5, 1.0], [0.25, 0.0]]), mask, turns)
    assert placed.tolist() == [[0, 0, 0.5, 0, 0, 1.0], [0, 0.25, 0, 0, 0, 0]]
    # per-turn KL coefficients: 0.1 on turn 0, 0.3 on turn 1
    torch.testing.assert_close(per_turn([0.1, 0.3], mask, turns),
                               torch.tensor([[0, 0.1, 0.1, 0, 0.3, 0.3], [0, 0.1, 0, 0, 0, 0]]))
    torch.testing.assert_close(per_turn(0.2, mask), 0.2 * mask.float())


def test_a_reward_with_no_generated_token_is_refused_not_lost():
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="row 1, which has no generated token"):
        place_rewards(torch.tensor([1.0, 1.0]), mask)
    # a missing second turn with a nonzero reward is refused too; a zero one loses nothing
    turns = torch.tensor([[-1, 0, 0], [-1, -1, -1]])
    with pytest.raises(ValueError, match="turn 1 of row 0"):
        place_rewards(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), mask, turns)
    assert place_rewards(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), mask, turns).sum().item() == 1.0


def test_gae_by_hand_with_a_masked_information_span():
    # Tokens: [a0, a1, info, a2] with mask [1, 1, 0, 1]; reward 1 on the last action; V = [0.5, 0.4, 9, 0.8]
    # gamma = 0.9, lambda = 0.8. The info token is skipped: a1's successor is a2.
    # a2: delta = 1 + 0.9*0 - 0.8 = 0.2;            A = 0.2
    # a1: delta = 0 + 0.9*0.8 - 0.4 = 0.32;         A = 0.32 + 0.72*0.2 = 0.464
    # a0: delta = 0 + 0.9*0.4 - 0.5 = -0.14;        A = -0.14 + 0.72*0.464 = 0.19408
    # returns R = A + V: [0.69408, 0.864, 0, 1.0]
    rewards = torch.tensor([[0.0, 0, 0, 1]])
    values = torch.tensor([[0.5, 0.4, 9.0, 0.8]])
    mask = torch.tensor([[1, 1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.19408, 0.464, 0.0, 0.2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.69408, 0.864, 0.0, 1.0], abs=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    # gamma = lambda = 1: A_t = sum_{s>=t} r_s - V_t -> rewards [0, 0.5, 1], V [0.1, 0.2, 0.3]: [1.4, 1.3, 0.7]
    adv, _ = gae(torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.1, 0.2, 0.3]]), torch.ones(1, 3))
    assert adv[0].tolist() == pytest.approx([1.4, 1.3, 0.7])


def test_whiten_by_hand():
    # masked values [1, 3] (the 100 is masked): mean 2, var 1 -> [-1, 1, 0]
    out = whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]), eps=0.0)
    assert out.tolist() == pytest.approx([-1.0, 1.0, 0.0])


# -- KL ---------------------------------------------------------------------------------------------
def test_kl_estimators_by_hand():
    # logp = log 0.5, ref = log 0.25: l = log(ref/p) = log 0.5 = -0.693147
    # k1 = -l = 0.693147; k2 = l^2/2 = 0.240227; k3 = exp(l) - 1 - l = 0.5 - 1 + 0.693147 = 0.193147
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    # equal policies: all three are 0
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    # p = [0.7, 0.3], q = [0.4, 0.6]: KL(p||q) = 0.7 ln(7/4) + 0.3 ln(3/6) = 0.391731 - 0.207944 = 0.183787
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    for kind in ("k1", "k3"):  # E_p[k] computed exactly over the two outcomes
        expected = (p * kl_estimate(p.log(), q.log(), kind)).sum().item()
        assert expected == pytest.approx(0.183787, abs=1e-5), kind


# -- losses -----------------------------------------------------------------------------------------
def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, m, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)            # 2.5
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)   # 3.0
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)            # 5.0
    # Dr. GRPO: a constant L (here 5), never the batch's padded width (3)
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm_length=5).item() == pytest.approx((6 / 5 + 4 / 5) / 2)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(x, m, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-max"):
        aggregate(x, m, "token-max")


def test_aggregation_with_the_mini_batch_counts_sums_over_micro_batches():
    # A mini-batch of 2 rows split into micro-batches of 1: with the mini-batch's counts (4 tokens, 2 rows)
    # the two micro losses add up to the mini-batch loss, in every mode.
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        norm = {"num_tokens": m.sum(), "num_seqs": 2, "norm_length": 7}
        whole = aggregate(x, m, mode, **norm)
        parts = aggregate(x[:1], m[:1], mode, **norm) + aggregate(x[1:], m[1:], mode, **norm)
        assert parts.item() == pytest.approx(whole.item()), mode
    # token-mean by hand: (1 + 2 + 3) / 4 + 4 / 4 = 2.5 (a per-micro denominator would give 2 + 4 = 6)
    assert aggregate(x[:1], m[:1], num_tokens=4).item() == pytest.approx(1.5)


def test_clipped_policy_loss_by_hand_with_mask_and_asymmetric_clip():
    # One sequence, 4 tokens, mask [0, 1, 1, 1] (token 0 is prompt: its huge ratio must not count).
    # ratios rho = [5, 1.5, 0.5, 1.1] (log-ratio = log rho), A = +1 on tokens 1, 2 and -1 on token 3,
    # clip_low 0.2, clip_high 0.28 -> clip range [0.8, 1.28]
    # t1: A=+1, rho 1.5: min(1.5, 1.28) = 1.28 -> L = -1.28 (clipped)
    # t2: A=+1, rho 0.5: min(0.5, 0.8)  = 0.5  -> L = -0.5  (unclipped)
    # t3: A=-1, rho 1.1: min(-1.1, -1.1) = -1.1 -> L = 1.1  (inside the range)
    # token-mean = (-1.28 - 0.5 + 1.1) / 3 = -0.226667 ; clip fraction 1/3
    rho = torch.tensor([[5.0, 1.5, 0.5, 1.1]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[7.0, 1.0, 1.0, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1]])
    loss, stats = clipped_policy_loss(rho.log(), old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-0.68 / 3, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    # symmetric clip 0.2: t1 -> -1.2; (-1.2 - 0.5 + 1.1) / 3 = -0.2
    loss, _ = clipped_policy_loss(rho.log(), old, adv, mask, clip_low=0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    # a per-sequence advantage (GRPO) broadcasts: A = 1 everywhere -> (-1.2 - 0.5 - 1.1) / 3
    loss, _ = clipped_policy_loss(rho.log(), old, torch.tensor([1.0]), mask, clip_low=0.2)
    assert loss.item() == pytest.approx(-2.8 / 3, abs=1e-6)


def test_approx_kl_is_k3_of_kl_old_new():
    # one token, pi_old = 0.5, pi_new = 0.8: r = log(0.8 / 0.5) = 0.470004
    # KL(old || new) estimated on old samples by k3: exp(r) - 1 - r = 1.6 - 1 - 0.470004 = 0.129996
    # (the reverse form exp(-r) - 1 + r = 0.625 - 1 + 0.470004 = 0.095004 is not an estimate of it)
    _, stats = clipped_policy_loss(torch.tensor([[math.log(0.8)]]), torch.tensor([[math.log(0.5)]]),
                                   torch.tensor([1.0]), torch.tensor([[1]]))
    assert stats["approx_kl"].item() == pytest.approx(0.129996, abs=1e-6)
    # exact KL(old || new) for two outcomes, old = [0.5, 0.5], new = [0.8, 0.2], equals E_old[k3]
    old, new = torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2])
    k3 = torch.exp(new.log() - old.log()) - 1 - (new.log() - old.log())
    assert (old * k3).sum().item() == pytest.approx((old * (old / new).log()).sum().item(), abs=1e-6)


def test_clipped_policy_loss_gradient_is_zero_on_masked_and_clipped_tokens():
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.9)]], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.tensor([[0, 1, 1]]), 0.2)
    loss.backward()
    # d/dlogp of -(rho * A)/2 for the unclipped token 2 = -rho/2 = -0.45; token 1 clipped, token 0 masked
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, -0.45])


def test_value_loss_by_hand():
    # V = 1.5, V_old = 1.0, R = 2.0, clip 0.2: (1.5-2)^2 = 0.25; clipped V = 1.2: (1.2-2)^2 = 0.64;
    # max = 0.64 -> 0.5 * 0.64 = 0.32. Second token masked.
    loss = value_loss(torch.tensor([[1.5, 9.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]),
                      torch.tensor([[1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(0.32)


def test_entropy_and_logprobs_from_logits_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]; H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert entropy_from_logits(logits).item() == pytest.approx(0.562335, abs=1e-6)
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    # temperature 2: logits [0, ln3 / 2] -> p1 = sqrt3 / (1 + sqrt3) = 0.633975
    assert logprobs_from_logits(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(0.633975), abs=1e-6)


def test_search_r1_templates_by_name_or_literal():
    from rl.prompts import ONE_SHOT_EXAMPLE, SEARCH_R1_TEMPLATE, render_prompt, resolve_template

    assert resolve_template("search_r1") == SEARCH_R1_TEMPLATE
    one_shot = resolve_template("search_r1_one_shot")
    # the paper's instruction, then the worked example, then the question
    assert one_shot.startswith(SEARCH_R1_TEMPLATE[:SEARCH_R1_TEMPLATE.index("Question: {question}")])
    assert one_shot.endswith(ONE_SHOT_EXAMPLE + "Question: {question}\n")
    assert resolve_template("Q: {question}") == "Q: {question}"

    class NoChat:
        chat_template = None

    assert render_prompt(NoChat(), " who? ", "search_r1_one_shot").endswith("<answer> Herman Melville </answer>\n\n"
                                                                            "Question: who?\n")
    with pytest.raises(ValueError, match="neither a known name"):
        resolve_template("search_r1_oneshot")
