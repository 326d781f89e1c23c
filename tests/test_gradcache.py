"""GradCache: parameter gradients equal those of the uncached computation (retrieval.gradcache)."""

import pytest
import torch

from retrieval.encoders import Encoder
from retrieval.gradcache import grad_cache, split_inputs
from retrieval.losses import contrastive_loss, similarity

QUERIES = ["what is a cell", "protein folding", "vitamin d and bones", "gene expression in mice", "covid vaccine"]
POSITIVES = ["cells are units of life", "proteins fold into shapes", "vitamin d strengthens bones",
             "mice genes are expressed", "vaccines prevent covid"]
NEGATIVES = ["stars are hot", "the stock market fell", "rain in spain", "a cat sat", "cells are units of life"]



@pytest.fixture(autouse=True)
def fp32_encoders(monkeypatch):
    # exactness checks: bf16 autocast (chosen on CPUs with native bf16) differs between batch layouts by ~1%
    monkeypatch.setenv("RAGKIT_PRECISION", "fp32")

def _exclude(passage_ids, positives):
    # as BEIRDataModule's collate: another copy of query i's positive is left out of its denominator
    return torch.tensor([[j != i and pid == positives[i] for j, pid in enumerate(passage_ids)]
                         for i in range(len(positives))])


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _setup(tiny_bert_dir, dropout=False):
    enc = Encoder(tiny_bert_dir, "mean", normalize=True, max_length=16, dropout=dropout)
    q_in = dict(enc.tokenize(QUERIES))
    p_in = dict(enc.tokenize(POSITIVES + NEGATIVES))          # hard negatives after the positives
    exclude = _exclude(POSITIVES + NEGATIVES, POSITIVES)      # NEGATIVES[4] duplicates POSITIVES[0]
    assert exclude.sum() == 1

    def loss_fn(q, p):
        return contrastive_loss(similarity(q, p), torch.arange(len(QUERIES)), 0.05, exclude)
    return enc, q_in, p_in, loss_fn


def test_gradcache_equals_full_batch_gradients(tiny_bert_dir):
    enc, q_in, p_in, loss_fn = _setup(tiny_bert_dir)
    enc.eval()                                                # no dropout: chunking cannot change anything
    loss = loss_fn(enc(**q_in), enc(**p_in))
    loss.backward()
    reference = _grads(enc)
    enc.zero_grad()
    result = grad_cache([(lambda x: enc(**x), q_in), (lambda x: enc(**x), p_in)], loss_fn, chunk_size=2)
    cached = _grads(enc)
    assert torch.allclose(result.loss, loss.detach(), atol=1e-6)
    assert reference.keys() == cached.keys() and len(reference) > 10
    for name in reference:
        assert torch.allclose(cached[name], reference[name], atol=1e-6, rtol=1e-4), name


def test_gradcache_replays_dropout_masks(tiny_bert_dir):
    # With dropout on, the cached gradients equal those of the same chunks encoded with a graph from the
    # same RNG state: the re-encoding in step 3 replays each chunk's dropout masks.
    enc, q_in, p_in, loss_fn = _setup(tiny_bert_dir, dropout=True)
    enc.train()
    torch.manual_seed(123)
    q = torch.cat([enc(**c) for c in split_inputs(q_in, 3)])
    p = torch.cat([enc(**c) for c in split_inputs(p_in, 3)])
    loss = loss_fn(q, p)
    loss.backward()
    reference = _grads(enc)
    enc.zero_grad()
    torch.manual_seed(123)
    result = grad_cache([(lambda x: enc(**x), q_in), (lambda x: enc(**x), p_in)], loss_fn, chunk_size=3)
    assert torch.allclose(result.loss, loss.detach(), atol=1e-6)
    for name, g in _grads(enc).items():
        assert torch.allclose(g, reference[name], atol=1e-6, rtol=1e-4), name
    # and dropout really was active: a different seed gives a different loss
    torch.manual_seed(7)
    assert not torch.allclose(loss_fn(enc(**q_in), enc(**p_in)), loss)
