"""The policy-gradient core (rl.update, rl.policy, rl.envs) and SearchR1's step against gradients computed
by hand: the loss written out token by token over single unpadded sequences, differentiated by autograd,
compared with what the update loop (and SearchR1's training step) actually applied. Sampling is at
temperature 0.7, so a log-prob at the wrong temperature changes the result; the reference differs from
the policy, so the KL term's sign and place show."""

import copy
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from training.models import load_causal_lm
from rl.envs import SearchEnv, TwoAttemptEnv
from rl.policy import ReferencePolicy, ValueHead
from rl.rollout import rollout
from rl.search import BM25Search, SafeSearch
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from training.settings import LM
from rl.update import advantages, old_values, update

pytestmark = pytest.mark.usefixtures("one_thread")
TAU = 0.7


class ForceRows(LogitsProcessor):
    """Row i of every generate call is forced to the tokens of ``texts[i]`` (then EOS): a deterministic
    rollout whose log-probs are still the model's own."""

    def __init__(self, tokenizer, texts):
        self.plans = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.eos, self.start = tokenizer.eos_token_id, None

    def __call__(self, input_ids, scores):
        if self.start is None or input_ids.shape[1] <= self.start:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for i, plan in enumerate(self.plans[:input_ids.shape[0]]):
            forced[i, plan[step] if step < len(plan) else self.eos] = 0.0
        return forced


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def other_model(model, seed=1, scale=0.05):
    """The same architecture with perturbed weights (a reference policy that is not the policy)."""
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ref


def hand_logprobs(model, ids, tau=TAU):
    """log p(x_t | x_<t) at temperature tau for one unpadded sequence, t = 1..n-1, with grad."""
    logits = model(input_ids=ids[None]).logits[0, :-1].float() / tau
    return torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]


def sample(model, tok, texts, prompts):
    torch.manual_seed(0)
    return rollout(model, tok, prompts, None, max_turn_tokens=12, max_response_tokens=12, temperature=TAU,
                   generation_kwargs={"logits_processor": LogitsProcessorList([ForceRows(tok, texts)])})


def hand_loss(model, r, adv, ref_model=None, beta=0.0, kl_in_loss=True):
    """1/N_tok sum_{i,t} m [ -A_i rho_it + beta k3_it ], rho = exp(lp - lp_old), k3 = e^(ref-lp) - 1 - (ref-lp)."""
    n_tok = int(r.loss_mask.sum())
    total = 0.0
    for i in range(len(r)):
        n = int(r.attention_mask[i].sum())
        ids = r.input_ids[i, :n]
        m = r.loss_mask[i, 1:n].float()
        lp = hand_logprobs(model, ids)
        rho = torch.exp(lp - r.old_logprobs[i, 1:n])
        term = -adv[i] * rho
        if ref_model is not None and kl_in_loss:
            with torch.no_grad():
                ref = hand_logprobs(ref_model, ids)
            term = term + beta * (torch.exp(ref - lp) - 1 - (ref - lp))
        total = total + (term * m).sum()
    return total / n_tok


def grads_of(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def run_update(model, r, adv, cfg, schedule, temperature=None, **kw):
    """rl.update (log-probs at TAU, the rollouts' sampling temperature) with a step that records the accumulated
    gradient of each mini-batch (and applies nothing)."""
    seen = []

    def step():
        seen.append(grads_of(model))
        model.zero_grad()

    model.zero_grad()
    stats = update(model, r, adv, cfg, schedule, lambda loss: loss.backward(), step,
                   temperature=TAU if temperature is None else temperature, **kw)
    return seen, stats


PROMPTS = ["question one", "question one", "a longer second question here", "a longer second question here"]
TEXTS = ["<answer>Paris</answer>", "I am not sure", "<answer>Rome</answer> because", "<answer>Madrid</answer>"]


def test_update_gradient_equals_the_hand_loss_for_any_micro_batch_size(lm):
    model, tok = lm
    r = sample(model, tok, TEXTS, PROMPTS)
    assert len(set(r.response_lengths.tolist())) > 1  # unequal lengths: the token normaliser matters
    ref_model = other_model(model)
    ref = ReferencePolicy("copy", ref_model).logprobs(model, r.tokens, TAU, start=min(r.prompt_lengths))
    cfg = PolicyLoss(kl_coef=0.5, kl_estimator="k3", clip_low=0.2)
    adv = torch.tensor([1.5, -0.5, 0.25, -1.0])
    model.zero_grad()
    hand_loss(model, r, adv, ref_model, beta=0.5).backward()
    expected = grads_of(model)
    for micro in (1, 3, 4):
        seen, stats = run_update(model, r, adv, cfg, Updates(1, None, micro), ref_logprobs=ref)
        assert len(seen) == 1
        for g, e in zip(seen[0], expected):
            torch.testing.assert_close(g, e, atol=2e-6, rtol=1e-4)
        # first pass over fresh rollouts: the importance ratio is exactly 1
        assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(0, abs=1e-7)


def test_dr_grpo_normaliser_is_a_constant(lm):
    model, tok = lm
    r = sample(model, tok, TEXTS, PROMPTS)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    cfg = PolicyLoss(aggregation="seq-mean-token-sum-norm", norm_length=50)
    # by hand: 1/(N_seq * 50) sum_i sum_t m (-A_i rho)
    model.zero_grad()
    (hand_loss(model, r, adv) * int(r.loss_mask.sum()) / (4 * 50)).backward()
    expected = grads_of(model)
    for micro in (1, 4):  # micro-batches of one row have other padded widths: the result must not change
        seen, _ = run_update(model, r, adv, cfg, Updates(1, None, micro))
        for g, e in zip(seen[0], expected):
            torch.testing.assert_close(g, e, atol=2e-7, rtol=1e-4)


def test_kl_in_the_reward_goes_into_the_advantage_not_the_loss(lm):
    model, tok = lm
    r = sample(model, tok, TEXTS, PROMPTS)
    ref_model = other_model(model)
    ref = ReferencePolicy("copy", ref_model).logprobs(model, r.tokens, TAU, start=min(r.prompt_lengths))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    beta = 0.3
    cfg = PolicyLoss(kl_coef=beta, kl_estimator="k1", kl_in_reward=True)
    adv, _ = advantages("grpo", r, rewards, cfg, group_size=2, ref_logprobs=ref, normalize_std=False)
    # by hand: r_i - beta * sum_t (log pi_old - log pi_ref), then r - mean per group of 2 (Dr. GRPO: with
    # the std of a group of 2 the advantages would be +-0.7071 whatever the penalty)
    pen = torch.stack([(r.old_logprobs[i] - ref[i]).masked_select(r.loss_mask[i].bool()).sum() for i in range(4)])
    shaped = rewards - beta * pen
    hand = []
    for g in range(2):
        x = shaped[2 * g:2 * g + 2]
        hand += (x - x.mean()).tolist()
    assert adv.tolist() == pytest.approx(hand, abs=1e-5)
    plain = advantages("grpo", r, rewards, PolicyLoss(), group_size=2, normalize_std=False)[0]
    assert (adv - plain).abs().max() > 1e-2
    # with the KL as a loss term (kl_in_reward false), the reward is not penalised as well
    in_loss = advantages("grpo", r, rewards, PolicyLoss(kl_coef=beta), group_size=2,
                         ref_logprobs=ref, normalize_std=False)[0]
    torch.testing.assert_close(in_loss, plain)
    # ... and the loss has no KL term: its gradient is the plain surrogate's
    model.zero_grad()
    hand_loss(model, r, adv).backward()
    expected = grads_of(model)
    seen, _ = run_update(model, r, adv, cfg, Updates(1, None, 2), ref_logprobs=ref)
    for g, e in zip(seen[0], expected):
        torch.testing.assert_close(g, e, atol=2e-6, rtol=1e-4)


def test_k1_as_a_loss_is_refused():
    with pytest.raises(ValueError, match="zero expected gradient"):
        PolicyLoss(kl_coef=0.1, kl_estimator="k1")
    PolicyLoss(kl_coef=0.1, kl_estimator="k1", kl_in_reward=True)  # in the reward it is the usual PPO penalty
    PolicyLoss(kl_coef=0.0, kl_estimator="k1")  # no KL at all
    with pytest.raises(ValueError, match="norm_length"):
        PolicyLoss(aggregation="seq-mean-token-sum-norm")


def test_first_ratio_is_exactly_one_with_lora_dropout(tiny_llama_dir):
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu", lora={"r": 4, "alpha": 8, "dropout": 0.5})
    with torch.no_grad():  # adapters that matter (peft initialises B to 0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.train()  # as Lightning leaves it: dropout would be active in a plain forward
    torch.manual_seed(0)
    r = rollout(model, tok, ["hello", "a longer prompt here"], None, max_turn_tokens=6, max_response_tokens=6,
                temperature=TAU)
    _, stats = run_update(model, r, torch.tensor([1.0, -1.0]), PolicyLoss(), Updates(1, None, 2))
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert model.training  # the mode is restored


def test_reference_modes(tiny_llama_dir, lm):
    model, tok = lm
    r = sample(model, tok, TEXTS[:2], PROMPTS[:2])
    own = r.old_logprobs
    ref = ReferencePolicy("copy", model)
    with torch.no_grad():  # the policy moves; the frozen copy does not
        moved = other_model(model)
    torch.testing.assert_close(ref.logprobs(moved, r.tokens, TAU), own, atol=1e-5, rtol=0)
    assert (ReferencePolicy("copy", moved).logprobs(model, r.tokens, TAU) - own).abs().max() > 1e-3
    ref.sync(moved)
    torch.testing.assert_close(ref.logprobs(model, r.tokens, TAU),
                               ReferencePolicy("copy", moved).logprobs(model, r.tokens, TAU), atol=1e-6, rtol=0)
    assert ReferencePolicy("none").logprobs(model, r.tokens) is None
    # adapters off: the base model's log-probs, not the adapted policy's
    lora, _ = load_causal_lm(tiny_llama_dir, device="cpu", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    off = ReferencePolicy.for_policy(lora, kl=True)
    assert off.mode == "adapters_off" and off.model is None
    expected = ReferencePolicy("copy", base).logprobs(base, r.tokens, TAU)
    torch.testing.assert_close(off.logprobs(lora, r.tokens, TAU), expected, atol=1e-5, rtol=0)
    assert ReferencePolicy.for_policy(lora, kl=True, warm_start=True).mode == "copy"
    with pytest.raises(ValueError, match="LoRA adapters"):
        ReferencePolicy("adapters_off", base)


def test_value_head_is_aligned_with_the_token_it_values():
    head = ValueHead(3)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        head.linear.bias.fill_(0.5)
    hidden = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    # V for token t is read from the hidden state at t - 1 (the prefix x_<t): [0, V(h0), V(h1)]
    assert head(hidden).tolist() == [[0.0, 1.5, 2.5]]


def test_gae_advantages_use_the_last_generated_token_and_aligned_values(lm):
    model, tok = lm
    r = sample(model, tok, TEXTS, PROMPTS)
    head = ValueHead(model.config.hidden_size)
    values = old_values(model, head, r, TAU)
    # by hand for row 1 (gamma = lambda = 1, no KL): A_t = R - V_t on every generated token, R on the last one
    adv, returns = advantages("gae", r, torch.tensor([0.0, 2.0, 0.0, 0.0]), PolicyLoss(),
                              values=values, whiten_advantages=False)
    m = r.loss_mask[1].bool()
    torch.testing.assert_close(adv[1][m], (2.0 - values[1][m]).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(returns[1][m], torch.full((int(m.sum()),), 2.0), atol=1e-5, rtol=0)
    assert torch.all(adv[1][~m] == 0)
    # values aligned with the token: V(x_<t) comes from the hidden state at t - 1
    with torch.no_grad():
        n = int(r.attention_mask[1].sum())
        h = model(input_ids=r.input_ids[1:2, :n], output_hidden_states=True).hidden_states[-1][0]
        hand = head.linear(h).squeeze(-1)
    t = int(m.nonzero()[0])
    assert values[1, t].item() == pytest.approx(hand[t - 1].item(), abs=1e-5)


def test_two_attempt_env_masks_the_instruction_and_numbers_the_turns(lm):
    model, tok = lm
    env = TwoAttemptEnv.for_chat(tok, "There might be an error. Please fix it.")
    assert "There might be an error. Please fix it." in env.text and "user" in env.text
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                     add_generation_prompt=True)
    first, second = "The answer is 6.", "Sorry, the answer is 5."

    class Attempts(LogitsProcessor):
        def __init__(self):
            self.prev_len = None

        def __call__(self, input_ids, scores):
            text = tok.decode(input_ids[0], skip_special_tokens=False)
            target = second if "Please fix it." in text else first
            done = text.count(target)
            plan = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            so_far = text.split("assistant\n")[-1]
            k = len(tok(so_far, add_special_tokens=False)["input_ids"]) if so_far and not done else 0
            forced = torch.full_like(scores, float("-inf"))
            forced[:, plan[k] if k < len(plan) and not done else tok.eos_token_id] = 0.0
            return forced

    torch.manual_seed(0)
    r = rollout(model, tok, [prompt], env, max_turn_tokens=20, max_response_tokens=200, temperature=TAU,
                generation_kwargs={"logits_processor": LogitsProcessorList([Attempts()])})
    assert r.turn_texts[0] == [first, second]
    assert r.counter("attempts").tolist() == [2]
    ids, mask, turns = r.input_ids[0], r.loss_mask[0], r.turn_ids[0]
    own0 = tok.decode(ids[turns == 0], skip_special_tokens=False)
    own1 = tok.decode(ids[turns == 1], skip_special_tokens=False)
    assert own0 == first + tok.eos_token and own1 == second + tok.eos_token
    info = tok.decode(ids[r.info_mask[0].bool()], skip_special_tokens=False)
    assert "Please fix it." in info and tok.eos_token not in info[:len(tok.eos_token)]  # no doubled end of turn
    assert torch.all(turns[mask == 0] == -1)
    # per-turn reward: 0 for attempt 1, 1 for attempt 2, each on its attempt's last token
    from rl.advantages import place_rewards
    placed = place_rewards(torch.tensor([[0.0, 1.0]]), r.loss_mask, r.turn_ids)
    assert placed[0, int((turns == 1).nonzero().max())].item() == 1.0 and placed.sum().item() == 1.0


def test_search_env_counts_failed_searches(lm):
    model, tok = lm

    def dead(queries, k):
        raise ConnectionError("engine down")

    env = SearchEnv(SafeSearch(dead, k=1), max_searches=1)
    text = "<search> capital of france </search>"
    r = rollout(model, tok, ["q: "], env, max_turn_tokens=20, max_response_tokens=100, temperature=TAU,
                generation_kwargs={"logits_processor": LogitsProcessorList([ForceRows(tok, [text])])})
    assert r.num_searches.tolist() == [1] and r.search_errors.tolist() == [1]
    assert "search failed: ConnectionError: engine down" in r.responses[0]


# -- SearchR1's training step ---------------------------------------------------------------------------
@pytest.fixture
def questions(tmp_path):
    import json

    rows = [{"question": "question one", "answers": ["Paris"]},
            {"question": "a longer second question here", "answers": ["Rome"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "train.jsonl"


def test_search_r1_step_applies_the_hand_gradient(tiny_llama_dir, questions):
    """One GRPO step with SGD(lr=1) and no clipping: the parameter change equals minus the gradient of the
    hand loss: rewards of the responses alone (the prompt's example answer is not the model's), group-
    normalised advantages, beta * k3 to a reference that differs from the policy, added to the loss."""
    from datamodules.rl_prompts import RLPromptDataModule
    from lightning_modules.search_r1 import SearchR1

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    template = "Example: <answer> Paris </answer>\nQ: {question}\n"  # an answer in the prompt itself
    beta = 0.5
    model = SearchR1(LM(tiny_llama_dir), env=None, template=template, chat=False,
                     sampling=Sampling(group_size=2, max_turn_tokens=12, max_response_tokens=12, temperature=TAU,
                                       generation_kwargs={"logits_processor": LogitsProcessorList([ForceRows(tok, TEXTS)])}),
                     loss=PolicyLoss(kl_coef=beta, kl_estimator="k3"), updates=Updates(micro_batch_size=3, max_grad_norm=None),
                     log_samples=SampleLog(count=0), optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    model.configure_model()
    with torch.no_grad():  # the reference is not the policy (as after some RL steps)
        for p in model.reference.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = copy.deepcopy(model.policy)
    prompts = model.prompts(["question one", "a longer second question here"], 2)
    r = model.sample(prompts)
    # rewards of the responses: [EM(Paris)=1, no answer=0 | Rome=1 (gold Rome), Madrid=0]
    assert model.rewards(r, [{"answers": ["Paris"]}] * 2 + [{"answers": ["Rome"]}] * 2).tolist() == [1, 0, 1, 0]
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (1 - 0.5) / (std([1, 0]) + eps), unbiased std = sqrt(1/2)
    adv = torch.tensor([a, -a, a, -a])
    before.zero_grad()
    hand_loss(before, r, adv, model.reference.model, beta=beta).backward()
    expected = {n: p.grad.detach().clone() for n, p in before.named_parameters()}
    start = {n: p.detach().clone() for n, p in before.named_parameters()}

    data = RLPromptDataModule(str(questions), test_file=None, batch_size=2, seed=0)
    data.setup("fit")
    data.rows["train"].sort(key=lambda row: row["question"] != "question one")  # the order PROMPTS assumes
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    trainer.fit(model, torch.utils.data.DataLoader(data.rows["train"], batch_size=2, shuffle=False,
                                                   collate_fn=__import__("datamodules.rl_prompts").rl_prompts.collate))
    worst = 0.0
    for n, p in model.policy.named_parameters():
        delta = start[n] - p.detach()
        torch.testing.assert_close(delta, expected[n], atol=5e-6, rtol=1e-3, msg=lambda m: f"{n}: {m}")
        worst = max(worst, float(expected[n].abs().max()))
    assert worst > 1e-3  # the check compared real gradients


def test_search_r1_reports_a_dead_engine(tiny_llama_dir, questions):
    """Failed searches are in the training metrics, and a batch whose searches all failed says so."""
    from lightning_modules.search_r1 import SearchR1
    from rl.search import SearchEngine

    class Dead(SearchEngine):
        def __call__(self, queries, k=3):
            raise ConnectionError("retriever unreachable")

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = ["<search> capital </search>"] * 4
    model = SearchR1(LM(tiny_llama_dir), env=SearchEnv(Dead(), max_searches=1), template="{question}", chat=False,
                     sampling=Sampling(group_size=2, max_turn_tokens=12, max_response_tokens=40, temperature=TAU,
                                       generation_kwargs={"logits_processor": LogitsProcessorList([ForceRows(tok, texts)])}),
                     loss=PolicyLoss(kl_coef=0.0), log_samples=SampleLog(count=0))
    from datamodules.rl_prompts import RLPromptDataModule

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="EVERY search of this run failed"):
        with pytest.warns(UserWarning, match=r"all 4 searches of this batch failed"):
            trainer.fit(model, RLPromptDataModule(str(questions), test_file=None, batch_size=2))
    m = trainer.callback_metrics
    assert m["train/searches"].item() == 1.0 and m["train/search_errors"].item() == 1.0
