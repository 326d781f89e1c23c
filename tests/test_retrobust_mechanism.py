"""RetRobust's mechanism at toy scale (the effect measured in docs/evidence/retrobust_effect.md): a model trained
with the project's supervised loss (generation.logprobs.masked_nll) on contexts drawn as the data module draws
them (datamodules.retrobust.draw_kinds) learns to answer against a misleading context when the mix holds
misleading contexts, and learns to copy the context when it is trained on the top-1 (answer-bearing) context only.

Toy task on a tiny random Llama: ``[CTX c] [Q q] [A] -> a = f(q)``, f a fixed permutation of 16 tokens; the top-1
context states the answer (c = a), a low-rank or random one a wrong answer (c != a). Evaluated on misleading
contexts: the share of questions whose greedy answer is f(q)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from datamodules.retrobust import draw_kinds
from generation.logprobs import masked_nll
from generation.tokens import TokenBatch

pytestmark = pytest.mark.usefixtures("one_thread")
N = 16
ANS = list(range(10, 10 + N))                 # answer tokens
QS = list(range(30, 30 + N))                  # question tokens
CTX, Q, A = 1, 2, 3                           # markers
F = dict(zip(QS, random.Random(0).sample(ANS, N)))


def example(q: int, kind: str, rng: random.Random) -> list[tuple[list[int], int]]:
    c = F[q] if kind == "top1" else rng.choice([a for a in ANS if a != F[q]])
    return [([CTX, c, Q, q, A], 0), ([F[q]], 1)]


def train(proportions, steps: int = 150, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(seed)
    for _ in range(steps):
        qs = [rng.choice(QS) for _ in range(32)]
        kinds = draw_kinds(len(qs), proportions, rng)
        batch = TokenBatch.from_segments([example(q, k, rng) for q, k in zip(qs, kinds)], pad_id=0)
        loss = masked_nll(model, batch, micro_batch_size=32)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@torch.no_grad()
def against_misleading_context(model) -> tuple[float, float]:
    """(share answered f(q), share that copied the context's wrong answer) over misleading contexts."""
    rng = random.Random(1)
    rows = [example(q, "low_rank", rng)[0][0] for q in QS for _ in range(4)]
    pred = model(input_ids=torch.tensor(rows)).logits[:, -1, :].argmax(-1).tolist()
    right = sum(p == F[r[3]] for p, r in zip(pred, rows)) / len(rows)
    copied = sum(p == r[1] for p, r in zip(pred, rows)) / len(rows)
    return right, copied


def test_mixed_contexts_teach_answering_against_a_misleading_context_top1_only_teaches_copying():
    mix_right, mix_copied = against_misleading_context(train((1 / 3, 1 / 3, 1 / 3)))
    top_right, top_copied = against_misleading_context(train((1.0, 0.0, 0.0)))
    # measured (seeds 0-2, 150 and 250 steps): mix 1.0 right, 0.0 copied; top-1 only 0.45-0.63 right, 0.27-0.48 copied
    assert mix_right >= 0.9 and mix_copied <= 0.05, (mix_right, mix_copied)  # learned f(q), ignores the context
    assert top_copied >= 0.2 and top_right <= mix_right - 0.25, (top_right, top_copied)  # often follows it
