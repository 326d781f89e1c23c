"""REPLUG ensemble: hand-computed mixture, scoring and greedy generation against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from generation.generate import generate
from training.models import load_causal_lm
from generation.prompts import PromptFormat
from generation.replug import (replug_generate, replug_mixture, replug_next_token, replug_score,
                               replug_sequence_logprobs, replug_weights)
from generation.scoring import score_triples


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, device="cpu")


def test_weights_and_mixture_by_hand():
    # Two documents with retrieval scores 2 and 0: lambda = (e^2, 1) / (e^2 + 1) = (0.880797, 0.119203).
    w = replug_weights([2.0, 0.0])
    torch.testing.assert_close(w, torch.tensor([0.880797, 0.119203]), atol=1e-6, rtol=0)
    # Next-token distributions over a 3-token vocabulary:
    #   p(.|d1 o x) = (0.7, 0.2, 0.1), p(.|d2 o x) = (0.1, 0.1, 0.8)
    #   mixture = 0.880797*(0.7,0.2,0.1) + 0.119203*(0.1,0.1,0.8)
    #           = (0.616558+0.011920, 0.176159+0.011920, 0.088080+0.095362) = (0.628478, 0.188080, 0.183442)
    p1, p2 = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.8])
    mixed = replug_mixture(torch.log(torch.stack([p1, p2])), w).exp()
    torch.testing.assert_close(mixed, torch.tensor([0.628478, 0.188080, 0.183442]), atol=1e-5, rtol=0)
    assert math.isclose(mixed.sum().item(), 1.0, rel_tol=1e-6)
    # Not a mix of raw logits: with logits (log p) the weighted sum would give a different, unnormalised answer.
    logit_mix = torch.softmax(w[0] * torch.log(p1) + w[1] * torch.log(p2), -1)
    assert not torch.allclose(logit_mix, mixed, atol=1e-2)
    # temperature: softmax(s / 2) of (2, 0) = (e, 1)/(e + 1) = (0.731059, 0.268941)
    torch.testing.assert_close(replug_weights([2.0, 0.0], temperature=2.0), torch.tensor([0.731059, 0.268941]),
                               atol=1e-6, rtol=0)


def test_replug_score_mixes_per_token(lm):
    model, tok = lm
    q, docs, s, y = "Who wrote Hamlet?", ["Hamlet is a play by Shakespeare.", "Paris is in France."], [1.5, 0.5], "William Shakespeare"
    fmt = PromptFormat()
    ours = replug_score(model, tok, [q], [docs], [s], [y], prompt_format=fmt)[0]
    # Direct: per-token log-probs for each document, mixed with softmax weights, summed over tokens.
    from generation.scoring import token_logprobs

    prompts = [fmt.render(tok, q, [d]) for d in docs]
    lp = token_logprobs(model, tok, prompts, [y, y], add_special_tokens=False)
    w = torch.softmax(torch.tensor(s), 0)
    expected = torch.log(w[0] * lp[0].exp() + w[1] * lp[1].exp()).sum()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # one document: the ensemble is the plain conditional log p(y | d o x)
    single = replug_score(model, tok, [q], [docs[:1]], [s[:1]], [y])[0]
    torch.testing.assert_close(single, score_triples(model, tok, [docs[0]], [q], [y])[0], atol=1e-5, rtol=1e-5)


def test_replug_generate_single_document_equals_greedy(lm):
    model, tok = lm
    fmt = PromptFormat()
    questions = ["Who wrote Hamlet?", "What is the capital of France, the country in Europe?"]
    docs = [["Hamlet is a play by Shakespeare."], ["Paris."]]
    ours = replug_generate(model, tok, questions, docs, [[1.0], [3.0]], prompt_format=fmt, max_new_tokens=6,
                           batch_size=2, stop_strings=())
    ref = generate(model, tok, [fmt.render(tok, q, d) for q, d in zip(questions, docs)], max_new_tokens=6,
                   add_special_tokens=False, stop_strings=None)
    assert ours == ref


def test_replug_generate_first_token_is_argmax_of_mixture(lm):
    model, tok = lm
    fmt = PromptFormat()
    q, docs, s = "Who wrote Hamlet?", ["Hamlet is a play.", "Shakespeare lived in England and wrote plays."], [0.3, 1.2]
    first = []
    for d in docs:
        ids = tok(fmt.render(tok, q, [d]), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            first.append(torch.softmax(model(input_ids=ids).logits[0, -1], -1))
    w = torch.softmax(torch.tensor(s), 0)
    expected = int((w[0] * first[0] + w[1] * first[1]).argmax())
    out = replug_generate(model, tok, [q, q], [docs, docs[::-1]], [s, s[::-1]], prompt_format=fmt,
                          max_new_tokens=1, stop_strings=())
    assert out[0] == out[1] == tok.decode([expected], skip_special_tokens=True)


def test_replug_rejects_empty_retrieval(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="question 0 .* no retrieved passages"):
        replug_generate(model, tok, ["q"], [[]], [[]])


def test_sequence_score_mixes_documents_per_token_by_hand():
    """Crafted log-probs where the documents disagree: doc 1 gives the two target tokens p = (0.9, 0.1), doc 2
    p = (0.1, 0.9); scores (ln 3, 0) give lambda = (0.75, 0.25).
      per token:  ln(0.75*0.9 + 0.25*0.1) + ln(0.75*0.1 + 0.25*0.9) = ln 0.7 + ln 0.3 = -1.560648
      whole sequences mixed:  ln(0.75*0.09 + 0.25*0.09) = ln 0.09 = -2.407946
      scores ignored (uniform): ln 0.5 + ln 0.5 = -1.386294"""
    lp = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    scores = [[math.log(3.0), 0.0]]
    assert replug_sequence_logprobs([lp], scores).item() == pytest.approx(math.log(0.7) + math.log(0.3), abs=1e-5)
    assert replug_sequence_logprobs([lp], scores, reduction="mean").item() == pytest.approx(
        (math.log(0.7) + math.log(0.3)) / 2, abs=1e-5)
    # temperature 2: lambda = softmax(ln3/2, 0) = (sqrt3, 1)/(sqrt3 + 1) = (0.633975, 0.366025)
    w = 3 ** 0.5 / (3 ** 0.5 + 1)
    expected = math.log(w * 0.9 + (1 - w) * 0.1) + math.log(w * 0.1 + (1 - w) * 0.9)
    assert replug_sequence_logprobs([lp], scores, temperature=2.0).item() == pytest.approx(expected, abs=1e-5)


def test_next_token_mixes_probabilities_with_the_score_weights_by_hand():
    """Rows (question 0, doc 1), (question 1, its only doc), (question 0, doc 2); lambda = (0.6, 0.4).
    doc 1: p = (0.7, 0.3, 1e-6), doc 2: p = (1e-6, 0.25, 0.75): the mixture is (0.42, 0.28, 0.30), argmax 0.
    Mixing log-probs (logits) instead picks token 1 (the geometric mean), ignoring the scores picks token 2."""
    p1 = torch.tensor([0.7, 0.3 - 1e-6, 1e-6])
    p2 = torch.tensor([1e-6, 0.25, 0.75 - 1e-6])
    other = torch.tensor([0.2, 0.5, 0.3])
    logp = torch.log(torch.stack([p1, other, p2]))
    log_w = torch.log(torch.tensor([0.6, 1.0, 0.4]))
    mixed = replug_next_token(logp, log_w, torch.tensor([0, 1, 0]), 2)
    torch.testing.assert_close(mixed.exp(), torch.stack([0.6 * p1 + 0.4 * p2, other]), atol=1e-6, rtol=0)
    assert mixed.argmax(-1).tolist() == [0, 1]
    assert int((0.6 * torch.log(p1) + 0.4 * torch.log(p2)).argmax()) == 1 and int((p1 + p2).argmax()) == 2


@pytest.fixture(scope="module")
def opinionated_lm(tiny_llama_dir):
    """The tiny Llama with attention outputs scaled up 5x and the final norm at 100: its next-token
    distributions are peaked and depend on the passage in the prompt, unlike the plain random model's
    (whose last-position distribution is nearly the same whatever the passage)."""
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(5.0)
        model.model.norm.weight.fill_(100.0)
    return model.eval(), tok


QUESTION = "Who wrote Hamlet?"
DOCS = ["Hamlet is a play by Shakespeare.", "Shakespeare lived in England and wrote plays.", "Paris is in France."]


def _first_token_probs(model, tok, fmt, docs):
    out = []
    for d in docs:
        ids = tok(fmt.render(tok, QUESTION, [d]), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out.append(torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1))
    return torch.stack(out)  # (k, V)


def test_replug_generate_follows_the_probability_mixture_of_disagreeing_documents(opinionated_lm):
    model, tok = opinionated_lm
    fmt = PromptFormat()
    p = _first_token_probs(model, tok, fmt, DOCS)
    assert len(set(p.argmax(-1).tolist())) > 1, "the documents must disagree for this test to mean anything"
    found = 0
    for scores in ([2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 2.0, 0.0]):
        w = torch.softmax(torch.tensor(scores), 0)
        expected = int((w[:, None] * p).sum(0).argmax())
        out = replug_generate(model, tok, [QUESTION], [DOCS], [scores], prompt_format=fmt, max_new_tokens=1,
                              stop_strings=())
        assert out[0] == tok.decode([expected], skip_special_tokens=True), scores
        logit_mix = int((w[:, None] * p.log()).sum(0).argmax())
        uniform = int(p.mean(0).argmax())
        found += expected != logit_mix and expected != uniform
    assert found >= 1, "no score setting separates the probability mixture from logit mixing and uniform weights"


def test_replug_score_on_disagreeing_documents_by_hand(opinionated_lm):
    model, tok = opinionated_lm
    fmt, y, scores = PromptFormat(), "William Shakespeare wrote it", [2.0, 0.0, -1.0]
    from generation.scoring import token_logprobs

    lp = torch.stack(token_logprobs(model, tok, [fmt.render(tok, QUESTION, [d]) for d in DOCS], [y] * 3,
                                    add_special_tokens=False))                       # (3, T)
    w = torch.softmax(torch.tensor(scores), 0)
    per_token = torch.log((w[:, None] * lp.exp()).sum(0)).sum()
    ours = replug_score(model, tok, [QUESTION], [DOCS], [scores], [y], prompt_format=fmt)[0]
    torch.testing.assert_close(ours, per_token, atol=1e-4, rtol=1e-4)
    # the documents disagree enough that the mistakes give other numbers
    whole_sequences = torch.log((w * lp.sum(1).exp()).sum())
    uniform = torch.log(lp.exp().mean(0)).sum()
    assert abs(per_token - whole_sequences) > 0.05 and abs(per_token - uniform) > 0.05
