"""Shared-prefix LM scoring (generation.scoring.prefix_cached_logprobs): the prefix's KV cache computed once and
copied across each batch gives the scores of today's batched scoring and of one-at-a-time scoring, within
1e-4 in fp32, for prompts whose suffixes and targets differ in length (so padding and positions matter), on a
rotary-position model (Llama) and a learned-absolute-position one (GPT-2), over several batches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from training.models import load_causal_lm
from generation.prompts import PRESETS
from generation.scoring import MIN_SHARED_PREFIX, pair_logprobs, score_triples, shared_prefix_length, token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97
PREFIX = [(7 * i) % 90 + 3 for i in range(MIN_SHARED_PREFIX + 4)]
# suffixes (the rest of the prompt) and targets of unequal lengths; 5 pairs make 2 batches of 3
PAIRS = [(PREFIX + [5, 17, 33, 2], [9, 41]), (PREFIX + [12], [7, 60, 8, 1, 4]), (PREFIX + [3, 88, 21, 19, 4, 6], [11]),
         (PREFIX + [50, 51], [52, 53, 54]), (PREFIX + [60, 70, 80], [90, 2])]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    else:
        m = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        with torch.no_grad():  # random init gives tiny position embeddings; make positions matter
            m.transformer.wpe.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp(request.param)
    m.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def one_at_a_time(model, pairs):
    """Reference: each (prompt, target) alone, unpadded, log_softmax over the full logits."""
    out = []
    for p, t in pairs:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + t])).logits[0].float(), -1)
        out.append(logp[len(p) - 1:len(p) + len(t) - 1].gather(-1, torch.tensor(t)[:, None])[:, 0])
    return out


def forward_tokens(model, fn) -> int:
    """Tokens the model's forward passes see while ``fn`` runs."""
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return sum(seen)


def next_token_logits(model, fn):
    """(fn's result, the last position's logits of every forward pass while it runs)."""
    seen = []
    handle = model.register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1].float().clone()))
    try:
        return fn(), seen
    finally:
        handle.remove()


def test_prefix_length_leaves_a_prompt_token_in_every_suffix():
    assert shared_prefix_length(PAIRS) == len(PREFIX)
    assert shared_prefix_length([(PREFIX, [1]), (PREFIX + [2], [3])]) == len(PREFIX) - 1
    assert shared_prefix_length([([1, 2, 3], [4]), ([2, 2, 3], [4])]) == 0


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shared_prefix_scores_equal_todays_and_one_at_a_time(model, batch_size):
    ref = one_at_a_time(model, PAIRS)
    cached = pair_logprobs(model, PAIRS, batch_size=batch_size, pad_id=0)
    plain = pair_logprobs(model, PAIRS, batch_size=batch_size, pad_id=0, shared_prefix=False)
    for c, p, r in zip(cached, plain, ref):
        assert c.shape == r.shape
        torch.testing.assert_close(c, r, atol=1e-4, rtol=0)
        torch.testing.assert_close(c, p, atol=1e-4, rtol=0)
    # and the prefix was run once: the forwards saw the prefix once plus the padded suffixes
    n_cached = forward_tokens(model, lambda: pair_logprobs(model, PAIRS, batch_size=batch_size))
    n_plain = forward_tokens(model, lambda: pair_logprobs(model, PAIRS, batch_size=batch_size, shared_prefix=False))
    assert n_cached < n_plain - (len(PAIRS) - 1) * len(PREFIX) + 1


def test_short_prefixes_and_gradients_take_the_plain_path(model):
    short = [([1, 2] + p[len(PREFIX):], t) for p, t in PAIRS]
    assert forward_tokens(model, lambda: pair_logprobs(model, short, batch_size=8)) == \
        forward_tokens(model, lambda: pair_logprobs(model, short, batch_size=8, shared_prefix=False))
    lp = pair_logprobs(model, PAIRS, batch_size=8, requires_grad=True)
    assert all(x.requires_grad for x in lp)


def test_few_shot_rag_prompts_score_as_before(tiny_llama_dir):
    """The LSR scorer's case: the few-shot preset's instruction and demonstrations are the shared prefix;
    passages, questions and answers differ in length."""
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    fmt = PRESETS["few_shot"]()
    docs = ["Paris is the capital of France.", "Rome, a city in Italy, was founded in 753 BC by Romulus.", "Hamlet.",
            "The Nile is a river."]
    inputs = ["capital of france?", "when was rome founded", "who wrote hamlet", "longest river in africa?"]
    targets = [" Paris", " 753 BC", " William Shakespeare", " the Nile river"]
    cached = score_triples(model, tok, docs, inputs, targets, prompt_format=fmt, batch_size=3)
    plain = score_triples(model, tok, docs, inputs, targets, prompt_format=fmt, batch_size=3, shared_prefix=False)
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=0)
    prompts = [fmt.render(tok, x, [] if d is None else [d]) for d, x in zip(docs, inputs)]
    per_token = token_logprobs(model, tok, prompts, targets, batch_size=3, add_special_tokens=False)
    plain_tok = token_logprobs(model, tok, prompts, targets, batch_size=3, add_special_tokens=False,
                               shared_prefix=False)
    assert max((a - b).abs().max().item() for a, b in zip(per_token, plain_tok)) <= 1e-4
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert shared_prefix_length([(p, [0]) for p in encoded]) >= MIN_SHARED_PREFIX  # the cached path ran


def test_generation_from_the_prefix_cache_equals_plain_generation(tiny_llama_dir):
    """RAG evaluation's reader (generation.generate): greedy continuations of few-shot prompts of unequal
    length, in two batches, are the same with and without the prefix cache, and the cache is used."""
    from generation.generate import generate

    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    fmt = PRESETS["few_shot"]()
    prompts = [fmt.render(tok, q, [d]) for q, d in [("capital of france?", "Paris is the capital of France."),
                                                     ("when was rome founded", "Rome was founded in 753 BC by Romulus "
                                                      "and Remus, twins raised by a wolf."),
                                                     ("who wrote hamlet", "Hamlet.")]]
    kw = dict(max_new_tokens=6, batch_size=2, stop_strings=None, add_special_tokens=False)
    cached, cached_logits = next_token_logits(model, lambda: generate(model, tok, prompts, **kw))
    plain, plain_logits = next_token_logits(model, lambda: generate(model, tok, prompts, shared_prefix=False, **kw))
    assert cached == plain and all(cached)
    # the greedy strings of a tiny random model hardly depend on the context: compare every step's logits
    cached_logits = cached_logits[1:]  # the first forward is the prefix's own
    assert len(cached_logits) == len(plain_logits) == 12  # 2 batches (2 rows, 1 row) x 6 steps
    for c, p in zip(cached_logits, plain_logits):
        torch.testing.assert_close(c, p, atol=1e-4, rtol=0)
    n_cached = forward_tokens(model, lambda: generate(model, tok, prompts, **kw))
    n_plain = forward_tokens(model, lambda: generate(model, tok, prompts, shared_prefix=False, **kw))
    assert n_cached < n_plain
