"""Token-mean losses under data parallelism, with 2 CPU processes (gloo): ranks holding different numbers of
loss tokens must give, after DDP's gradient average, the gradient of one process holding the whole batch.
Both normalisers are checked: the supervised masked NLL (RetRobust, the SFT warm start) and the RL update's
token-mean (rl.update). Rank 0 holds one short row, rank 1 the three others (many more loss tokens): a rank
dividing by its own count would weigh rank 0's tokens several times more."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from generation.logprobs import masked_nll
from generation.tokens import TokenBatch
from rl.rollout import rollout
from rl.settings import PolicyLoss, Updates
from rl.update import update
from test_policy_gradient import PROMPTS, TAU, TEXTS, ForceRows

pytestmark = pytest.mark.distributed
ROWS = {0: [0], 1: [1, 2, 3]}
ADV = torch.tensor([1.5, -0.5, 0.25, -1.0])


def _segments():
    """Prompt (no loss) + answer (loss) token ids; the answers' lengths differ a lot."""
    return [[([5, 6, 7], 0), ([11, 12], 1)],
            [([5, 6], 0), ([13, 14, 15, 16, 17, 18], 1)],
            [([8, 9, 10, 11], 0), ([19, 20, 21, 22, 23], 1)],
            [([5], 0), ([24, 25, 26, 27, 28, 29, 30], 1)]]


def _rollouts(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    r = rollout(model, tok, PROMPTS, None, max_turn_tokens=12, max_response_tokens=12, temperature=TAU,
                generation_kwargs={"logits_processor": LogitsProcessorList([ForceRows(tok, TEXTS)])})
    return model, r


def _grads(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _nll_grads(model, rows):
    model.zero_grad()
    batch = TokenBatch.from_segments([_segments()[i] for i in rows], pad_id=0)
    masked_nll(model, batch, across_ranks=True).backward()
    return _grads(model)


def _update_grads(model, r, rows):
    model.zero_grad()
    idx = torch.tensor(rows)
    cfg = PolicyLoss(aggregation="token-mean")
    update(model, r.select(idx), ADV[idx], cfg, Updates(1, None, 2), lambda loss: loss.backward(), lambda: None,
           temperature=TAU)
    return _grads(model)


def _worker(rank, world, init_file, model_dir, out_dir):
    torch.set_num_threads(1)
    model, r = _rollouts(model_dir)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for name, grads in (("nll", _nll_grads(model, ROWS[rank])), ("update", _update_grads(model, r, ROWS[rank]))):
            for g in grads:                                       # what DDP does: average over ranks
                dist.all_reduce(g)
                g /= world
            out[name] = grads
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


def test_token_mean_losses_on_two_ranks_equal_one_process(tiny_llama_dir, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tiny_llama_dir, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt")
    model, r = _rollouts(tiny_llama_dir)
    counts = [int(r.loss_mask[ROWS[k]].sum()) for k in (0, 1)]
    assert counts[1] >= 2 * counts[0]  # the ranks' token counts differ: the normaliser matters
    expected = {"nll": _nll_grads(model, [0, 1, 2, 3]), "update": _update_grads(model, r, [0, 1, 2, 3])}
    for name in ("nll", "update"):
        assert any(e.abs().sum() > 0 for e in expected[name])
        for got, e in zip(result[name], expected[name]):
            torch.testing.assert_close(got, e, atol=1e-6, rtol=1e-4)
