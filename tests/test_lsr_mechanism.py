"""The mechanism behind REPLUG LSR's effect on the arithmetic-facts testbed (docs/evidence/lsr_effect.md): the
frozen LM's likelihood of the answer is highest with the passage that states it, and the NAACL direction
KL(Q_LM || P_R) moves the retriever's distribution over its top-k towards that passage, so the right fact becomes
the retriever's top-1. A toy retriever (free scores of 3 queries x 5 candidates, the right one ranked last) and LM
log-likelihoods of the kind measured there (the right fact about 1-2 nats above its near misses)."""

import torch

from retrieval.lsr import lsr_loss


def train(direction: str, steps: int = 200, lr: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    # retriever similarities: near-identical facts, the right one (column 0) slightly below the others
    scores = torch.tensor([[0.50, 0.52, 0.53, 0.51, 0.54],
                           [0.40, 0.41, 0.45, 0.42, 0.43],
                           [0.60, 0.62, 0.61, 0.64, 0.63]], requires_grad=True)
    # log P_LM(answer | fact, question): the fact that states the sum makes the answer likelier
    logliks = torch.tensor([[-1.0, -2.6, -2.9, -2.4, -3.1],
                            [-0.8, -2.0, -2.2, -2.5, -1.9],
                            [-1.5, -2.7, -3.0, -2.8, -3.3]])
    optimizer = torch.optim.SGD([scores], lr=lr)
    p_gold = []
    for _ in range(steps):
        loss = lsr_loss(scores, logliks, gamma=0.1, beta=0.1, direction=direction)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        p_gold.append(torch.softmax(scores.detach() / 0.1, dim=1)[:, 0].mean().item())
    return scores.detach(), p_gold


def test_the_naacl_direction_makes_the_lm_preferred_fact_the_top_1():
    before = torch.softmax(torch.tensor([[0.50, 0.52, 0.53, 0.51, 0.54]]) / 0.1, dim=1)[0, 0].item()
    scores, p_gold = train("q||p_r")
    assert (scores.argmax(dim=1) == 0).all(), scores          # every query now retrieves its fact first
    assert p_gold[-1] > 0.8 > before                            # P_R(right fact) from ~0.18 to most of the mass
    assert all(b >= a - 1e-6 for a, b in zip(p_gold, p_gold[1:]))  # and it only rises on the way


def test_an_lm_indifferent_to_the_passage_teaches_nothing():
    """The counterfactual: equal log-likelihoods (an LM that ignores the passage) leave Q uniform, and the loss
    only flattens the retriever towards uniform: the right fact gets no more than its 1/5 share."""
    scores = torch.tensor([[0.50, 0.52, 0.53, 0.51, 0.54]], requires_grad=True)
    optimizer = torch.optim.SGD([scores], lr=0.05)
    for _ in range(200):
        loss = lsr_loss(scores, torch.full((1, 5), -2.0), gamma=0.1, beta=0.1, direction="q||p_r")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    p = torch.softmax(scores.detach() / 0.1, dim=1)[0]
    assert p[0].item() < 0.25 and (p - 0.2).abs().max().item() < 0.05, p
