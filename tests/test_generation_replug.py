"""REPLUG ensemble: hand-computed mixture, scoring and greedy generation against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from generation.generate import generate
from generation.lm import load_causal_lm
from generation.prompts import PromptFormat
from generation.replug import replug_generate, replug_mixture, replug_score, replug_weights
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
