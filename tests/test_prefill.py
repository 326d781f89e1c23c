"""Shared prompt tokens computed once.

- Rollout prefill (generation.prefill): each distinct prompt and the prompts' shared prefix run once; the first
  generated token's logits equal those of each prompt run alone, unpadded, with groups of repeated prompts of
  unequal lengths; a greedy rollout through it equals the plain-prefill reference.
- Log-probs (generation.logprobs.sequence_logprobs ``prefix``): the shared leading columns run once per
  micro-batch; values and gradients equal the plain pass; RL's old, new and reference log-probs use the
  rollouts' one ``prefix``, so the first on-policy ratio stays exactly 1.

On a rotary-position model (Llama) and a learned-absolute-position one (GPT-2)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from generation.logprobs import MIN_SHARED_PREFIX, common_prefix, sequence_logprobs
from generation.prefill import prefill
from generation.tokens import pad
from test_shared_prefix import model  # noqa: F401  (the tiny Llama and GPT-2, a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
PREFIX = [(7 * i) % 90 + 3 for i in range(MIN_SHARED_PREFIX + 3)]
# groups of 2-3 copies, suffixes of unequal lengths, rows out of group order
DISTINCT = [PREFIX + [5, 17, 33, 2], PREFIX + [12], PREFIX + [3, 88, 21, 19, 4, 6]]
PROMPTS = [DISTINCT[0], DISTINCT[1], DISTINCT[0], DISTINCT[2], DISTINCT[1], DISTINCT[2], DISTINCT[0]]


def alone(model, prompt):
    """Reference: the next-token logits after ``prompt`` run alone, unpadded."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt])).logits[0, -1]


def first_step(model, ids, mask, cache):
    """What generate's first step computes: the last column on top of the prefilled cache."""
    from generation.logprobs import position_ids
    with torch.no_grad():
        return model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=position_ids(mask)[:, -1:],
                     past_key_values=cache, use_cache=True).logits[:, -1]


def test_prefilled_cache_gives_each_prompts_own_next_token_logits(model):
    ids, mask, cache = prefill(model, PROMPTS, pad_id=0)
    assert ids.shape == (len(PROMPTS), len(DISTINCT[2])) and cache.get_seq_length() == ids.shape[1] - 1
    for row, p in enumerate(PROMPTS):
        assert ids[row][mask[row].bool()].tolist() == p  # the row holds its own prompt, padding masked
    logits = first_step(model, ids, mask, cache)
    for row, p in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], alone(model, p), atol=1e-4, rtol=1e-4)


def test_prefill_runs_each_distinct_suffix_once(model):
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        prefill(model, PROMPTS, pad_id=0)
    finally:
        hook.remove()
    # the prefix once (batch 1), then the 3 distinct suffixes, all but their last column
    assert seen == [(1, len(PREFIX)), (3, len(DISTINCT[2]) - len(PREFIX) - 1)]


def test_repeats_without_a_long_prefix_are_deduplicated_and_distinct_prompts_left_alone(model):
    short = [[5, 6, 7], [9, 8], [5, 6, 7]]
    ids, mask, cache = prefill(model, short, pad_id=0)
    logits = first_step(model, ids, mask, cache)
    for row, p in enumerate(short):
        torch.testing.assert_close(logits[row], alone(model, p), atol=1e-4, rtol=1e-4)
    assert prefill(model, [[5, 6, 7], [9, 8]], pad_id=0) is None
    with pytest.raises(ValueError, match="at least one token"):
        prefill(model, [[5], []], pad_id=0)


def test_greedy_rollout_with_prefill_equals_the_plain_prefill(tiny_llama_dir):
    """rl.rollout's first turn through prefill (groups of G copies sharing a long instruction) gives the
    tokens and the per-step logits of the reference that prefills every row in full."""
    from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

    from rl.rollout import rollout

    class Record(LogitsProcessor):
        def __init__(self):
            self.steps = []

        def __call__(self, input_ids, scores):
            self.steps.append(scores.clone())
            return scores

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    instruction = "Answer the question below. Think first, then give the answer between answer tags. "
    # questions of unequal token lengths, so the layouts [prefix | padding | suffix] and [padding | prompt] differ
    prompts = [instruction + q for q in ("What is 2 + 3?", "Name the capital city of France, please, in one word.") for _ in range(3)]
    assert prefill(model, [tok(p, add_special_tokens=False)["input_ids"] for p in prompts], 0) is not None
    runs = {}
    for reuse in (False, True):
        rec = Record()
        runs[reuse] = (rollout(model, tok, prompts, do_sample=False, max_turn_tokens=6, max_response_tokens=6,
                               compute_logprobs=False, reuse_cache=reuse,
                               generation_kwargs={"logits_processor": LogitsProcessorList([rec])}), rec.steps)
    (plain, plain_steps), (cached, cached_steps) = runs[False], runs[True]
    assert torch.equal(plain.input_ids, cached.input_ids) and plain.responses == cached.responses
    assert len(plain_steps) == len(cached_steps) == 6
    for a, b in zip(plain_steps, cached_steps):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


# -- log-probs with a shared prefix ------------------------------------------------------------------------------
SUFFIXES = [[5, 17, 33, 2, 9, 41], [12, 7], [3, 88, 21, 19, 4, 6, 11, 60], [50, 51, 52]]


def right_padded():
    ids, mask = pad([PREFIX + s for s in SUFFIXES], 0, "right")
    return ids, mask, len(PREFIX) + 1  # start: the first scored column


def forward_shapes(model, fn):
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_common_prefix_counts_equal_real_leading_columns():
    ids, mask, start = right_padded()
    assert common_prefix(ids, mask, start - 1) == len(PREFIX)
    assert common_prefix(ids, mask, MIN_SHARED_PREFIX + 1) == MIN_SHARED_PREFIX + 1  # the limit
    other = ids.clone()
    other[2, MIN_SHARED_PREFIX + 1] += 1  # one row differs at column 17
    assert common_prefix(other, mask, start - 1) == MIN_SHARED_PREFIX + 1
    masked = mask.clone()
    masked[1, MIN_SHARED_PREFIX] = 0  # padding is never shared
    assert common_prefix(ids, masked, start - 1) == MIN_SHARED_PREFIX
    other[0, 3] += 1  # under MIN_SHARED_PREFIX: nothing worth sharing
    assert common_prefix(other, mask, start - 1) == 0


def test_logprobs_with_a_shared_prefix_equal_the_plain_ones_and_run_it_once_per_micro_batch(model):
    ids, mask, start = right_padded()
    kw = dict(start=start, micro_batch_size=3, with_entropy=True, temperature=0.7)
    with torch.no_grad():
        plain = sequence_logprobs(model, ids, mask, **kw)
        shapes = forward_shapes(model, lambda: setattr(model, "_out", sequence_logprobs(model, ids, mask, **kw,
                                                                                         prefix=len(PREFIX))))
    shared = model.__dict__.pop("_out")
    real = mask.float()
    torch.testing.assert_close(shared.logprobs * real, plain.logprobs * real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.entropy * real, plain.entropy * real, atol=1e-5, rtol=1e-5)
    rest = ids.shape[1] - len(PREFIX)
    assert shapes == [(1, len(PREFIX)), (3, rest), (1, len(PREFIX)), (1, rest)]
    with pytest.raises(ValueError, match="prefix"):
        sequence_logprobs(model, ids, mask, start=start, prefix=start)


def test_gradients_through_the_repeated_prefix_equal_the_plain_ones(model):
    ids, mask, start = right_padded()
    weights = torch.linspace(0.5, 2.0, ids.shape[1])[None] * mask  # unequal weights: every token's gradient counts
    grads = {}
    for prefix in (0, len(PREFIX)):
        model.zero_grad()
        lp = sequence_logprobs(model, ids, mask, start=start, micro_batch_size=2, prefix=prefix).logprobs
        (lp * weights).sum().backward()
        grads[prefix] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[0].keys() == grads[len(PREFIX)].keys() and len(grads[0]) > 4
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[len(PREFIX)][n], g, atol=1e-5, rtol=1e-4, msg=n)
    model.zero_grad()


def test_no_prefix_under_gradient_checkpointing(model):
    """transformers turns the KV cache off under gradient checkpointing in training: the plain pass runs."""
    ids, mask, start = right_padded()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        shapes = forward_shapes(model, lambda: sequence_logprobs(model, ids, mask, start=start, micro_batch_size=4,
                                                                 prefix=len(PREFIX)).logprobs.sum().backward())
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
        model.zero_grad()
    assert shapes == [tuple(ids.shape)]


def test_rl_old_new_and_reference_logprobs_share_the_rollouts_prefix(tiny_llama_dir):
    """The rollout fixes one ``prefix`` (kept by ``select``); the reference (through the module's
    reference_logprobs) and the update run it too, so a copied reference equals the old log-probs exactly and
    the first on-policy ratio is 1."""
    from lightning_modules.score import SCoRe
    from rl.policy import ReferencePolicy
    from rl.rollout import rollout
    from rl.settings import PolicyLoss, Updates
    from rl.update import update
    from training.settings import LM

    module = SCoRe(LM(tiny_llama_dir, lora={"r": 4, "alpha": 8, "dropout": 0.5}), task="arithmetic")
    module.configure_model()
    policy, tok = module.policy, module.tokenizer
    with torch.no_grad():  # adapters that matter (peft initialises B to 0)
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    module.reference = ReferencePolicy("copy", policy)
    instruction = "Answer the question below. Think first, then give the answer between answer tags. "
    prompts = [instruction + q for q in ("What is 2 + 3?", "Name the capital city of France, please, in one word.",
                                         "Why?")]
    torch.manual_seed(0)
    shapes = forward_shapes(policy, lambda: setattr(module, "_r", rollout(
        policy, tok, prompts, None, max_turn_tokens=5, max_response_tokens=5, temperature=0.7)))
    r = module.__dict__.pop("_r")
    # the rollout's last passes are its old log-probs: the prefix once, then the rest of every row
    assert shapes[-2:] == [(1, r.prefix), (3, r.input_ids.shape[1] - r.prefix)]
    expected = common_prefix(r.input_ids, r.attention_mask, min(r.prompt_lengths) - 1)
    assert r.prefix == expected == len(tok(instruction.rstrip(), add_special_tokens=False)["input_ids"])
    assert r.select([2, 0]).prefix == r.prefix
    module.sampling.temperature = 0.7
    shapes = forward_shapes(module.reference.model, lambda: setattr(module, "_ref", module.reference_logprobs(r)))
    assert shapes[0] == (1, r.prefix)
    ref = module.__dict__.pop("_ref")
    assert torch.equal(ref.cpu(), r.old_logprobs)
    shapes = forward_shapes(policy, lambda: setattr(module, "_stats", update(
        policy, r, torch.tensor([1.0, -0.5, 0.5]), PolicyLoss(kl_coef=0.1), Updates(1, None, 2),
        lambda loss: loss.backward(), policy.zero_grad, temperature=0.7, ref_logprobs=ref)))
    stats = module.__dict__.pop("_stats")
    assert shapes[0] == (1, r.prefix)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(0, abs=1e-7)


def test_lsr_scoring_option_runs_whole_prompts_or_the_shared_prefix_once(tiny_llama_dir):
    """``LMScoring.shared_prefix`` reaches the scorer: True runs the few-shot prefix once (a batch-1 forward of it),
    False runs every prompt whole; the scores agree."""
    from retrieval.lsr_lm import FrozenLM, LMScoring, lm_scores
    from generation.prompts import prompt_format
    from training.models import load_causal_lm

    frozen = FrozenLM(*load_causal_lm(tiny_llama_dir, device="cpu"))
    prompt = prompt_format("few_shot")
    args = (["who wrote hamlet", "capital of peru"], [["Shakespeare wrote it.", "A play."], ["Lima is.", "Peru."]],
            ["Shakespeare", "Lima"])
    runs = {}
    for shared in (True, False):
        shapes = forward_shapes(frozen.model, lambda: runs.__setitem__(shared, lm_scores(
            frozen, LMScoring(shared_prefix=shared), prompt, None, *args)))
        runs[shared, "batch-1 forwards"] = sum(s[0] == 1 for s in shapes)
    assert runs[True, "batch-1 forwards"] == 1 and runs[False, "batch-1 forwards"] == 0
    torch.testing.assert_close(runs[True], runs[False], atol=1e-4, rtol=1e-4)
