"""LM scoring: batched == one-at-a-time, prompt tokens masked, per-token mean, truncation, prompts."""

from __future__ import annotations

import pytest
import torch

from generation.generate import generate
from training.models import load_causal_lm
from generation.prompts import PromptFormat, first_line_answer
from generation.scoring import encode_pairs, reduce_logprobs, score_triples, token_logprobs

PROMPTS = ["Question: who wrote hamlet?\nAnswer:", "q?", "A much longer prompt about the history of the Roman "
           "empire and its many emperors, wars and roads.\nAnswer:", "Capital of France:"]
TARGETS = [" William Shakespeare", " yes", " Augustus", " Paris, the city of light"]


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, device="cpu")


def loop_logprobs(model, tok, prompts, targets):
    """Reference: one example at a time, no padding, full logits."""
    out = []
    for p, t in zip(prompts, targets):
        p_ids = tok(p)["input_ids"]
        t_ids = tok(t, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + t_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        out.append(torch.stack([logp[len(p_ids) - 1 + j, tok_id] for j, tok_id in enumerate(t_ids)]))
    return out


def test_batched_equals_one_at_a_time(lm):
    model, tok = lm
    batched = token_logprobs(model, tok, PROMPTS, TARGETS, batch_size=3)
    looped = loop_logprobs(model, tok, PROMPTS, TARGETS)
    for b, ref in zip(batched, looped):
        assert b.shape == ref.shape
        torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)


def test_prompt_tokens_are_masked_like_hf_labels(lm):
    """sum_t log p(y_t | c, y_<t) must equal -T * HF's loss with labels=-100 on the prompt tokens."""
    model, tok = lm
    p, t = PROMPTS[0], TARGETS[0]
    p_ids, t_ids = tok(p)["input_ids"], tok(t, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + t_ids])
    labels = torch.tensor([[-100] * len(p_ids) + t_ids])
    with torch.no_grad():
        hf_mean_nll = model(input_ids=ids, labels=labels).loss
    ours = reduce_logprobs(token_logprobs(model, tok, [p], [t]), "sum")[0]
    torch.testing.assert_close(ours, -hf_mean_nll * len(t_ids), atol=1e-4, rtol=1e-4)
    ours_mean = reduce_logprobs(token_logprobs(model, tok, [p], [t]), "mean")[0]
    torch.testing.assert_close(ours_mean, -hf_mean_nll, atol=1e-5, rtol=1e-5)


def test_mean_is_sum_over_token_count_by_hand():
    per_token = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-0.5])]
    torch.testing.assert_close(reduce_logprobs(per_token, "sum"), torch.tensor([-6.0, -0.5]))
    torch.testing.assert_close(reduce_logprobs(per_token, "mean"), torch.tensor([-2.0, -0.5]))
    with pytest.raises(ValueError, match="reduction"):
        reduce_logprobs(per_token, "max")


def test_truncation_keeps_target_and_cuts_prompt_left(lm):
    _, tok = lm
    (p, t), = encode_pairs(tok, [PROMPTS[2]], [" Augustus"], max_length=8)
    full_p = tok(PROMPTS[2])["input_ids"]
    assert len(p) + len(t) == 8 and p == full_p[len(full_p) - len(p):]
    with pytest.raises(ValueError, match="target 0"):
        encode_pairs(tok, ["x"], [" a long target of many tokens indeed"], max_length=3)
    with pytest.raises(ValueError, match="target 0 .* has no tokens"):
        encode_pairs(tok, ["x"], [""])


def test_score_triples_uses_chat_template_and_matches_token_logprobs(lm):
    model, tok = lm
    fmt = PromptFormat()
    docs = ["Paris is the capital of France.", None]
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    targets = ["Paris", "Shakespeare"]
    scores = score_triples(model, tok, docs, questions, targets, prompt_format=fmt)
    prompt0 = fmt.render(tok, questions[0], [docs[0]])
    assert prompt0.startswith("<|im_start|>") and "Passage 1: Paris is" in prompt0
    prompt1 = fmt.render(tok, questions[1])
    assert "Passage" not in prompt1
    ref = reduce_logprobs(token_logprobs(model, tok, [prompt0, prompt1], targets, add_special_tokens=False))
    torch.testing.assert_close(scores, ref)
    # requires_grad keeps the graph (LSR, training through the LM)
    g = score_triples(model, tok, docs, questions, targets, requires_grad=True)
    assert g.requires_grad


def test_plain_prompt_without_chat():
    fmt = PromptFormat(chat=False, answer_prefix="Answer:")

    class NoChat:
        chat_template = None

    assert fmt.render(NoChat(), "q?", ["p1", "p2"]).endswith("Passage 1: p1\n\nPassage 2: p2\n\nQuestion: q?\nAnswer:")


def test_first_line_answer():
    assert first_line_answer("  Answer: The Eiffel Tower.\nMore text") == "The Eiffel Tower"
    assert first_line_answer('"Paris"') == "Paris"
    assert first_line_answer("\n\n") == ""
    assert first_line_answer("The answer is 1972.") == "1972"


def test_generate_is_batched_greedy_in_input_order(lm):
    model, tok = lm
    prompts = ["Hello there", "A longer prompt with several words", "x"]
    batched = generate(model, tok, prompts, max_new_tokens=5, batch_size=2, stop_strings=None)
    single = [generate(model, tok, [p], max_new_tokens=5, batch_size=1, stop_strings=None)[0] for p in prompts]
    assert batched == single


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory, tiny_llama_dir) -> str:
    """A 2-layer, hidden-32 random GPT-2 (learned absolute position embeddings) with the SmolLM2 tokenizer.
    Its position table is scaled up so a shifted position changes the log-probs a lot."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_left_padded_scoring_on_an_absolute_position_model(tiny_gpt2_dir):
    """Rows of different lengths are left padded in one batch: on GPT-2 every row must still see positions
    0, 1, ... from its first real token (position ids from the attention mask), as when scored alone."""
    model, tok = load_causal_lm(tiny_gpt2_dir, device="cpu")
    batched = token_logprobs(model.eval(), tok, PROMPTS, TARGETS, batch_size=4)
    looped = loop_logprobs(model, tok, PROMPTS, TARGETS)
    for b, ref in zip(batched, looped):
        torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)
