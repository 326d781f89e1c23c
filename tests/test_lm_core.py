"""The LM core (generation/tokens.py, generation/logprobs.py) against hand computations: log-probs of a
padded batch equal a loop over single unpadded sequences, on a rotary model (Llama) and on an
absolute-position one (GPT-2), for left and right padding; masked NLL by its formula."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from generation.logprobs import (dropout_off, entropy_from_logits, logprobs_from_logits, masked_nll, position_ids,
                                 sequence_logprobs)
from generation.tokens import TokenBatch, pad, pad_values

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 97
PAD = 0
ROWS = [[5, 17, 33, 2, 9, 41, 8], [12, 7, 60], [3, 88, 21, 19, 4]]  # unequal lengths: padding matters
TAU = 0.7


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        m = LlamaForCausalLM(config)
    else:  # learned absolute position embeddings: a wrong position shifts every token's embedding
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        m = GPT2LMHeadModel(config)
        with torch.no_grad():  # random init gives tiny position embeddings; make positions matter
            m.transformer.wpe.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp(request.param)
    m.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def hand_logprobs(model, row, temperature=1.0):
    """log p(x_t | x_<t) for t = 1.., one unpadded sequence at a time, by log_softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0].double() / temperature
    logp = torch.log_softmax(logits, -1)
    return torch.tensor([float(logp[t - 1, row[t]]) for t in range(1, len(row))], dtype=torch.float64)


def test_pad_left_and_right():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[1, 2, 3], [4]], pad_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pad_values([[1], [2, 3]], -1, "left", width=3).tolist() == [[-1, -1, 1], [-1, 2, 3]]
    with pytest.raises(ValueError, match="padding side"):
        pad([[1]], 0, side="middle")


def test_from_segments_masks_and_turns():
    rows = [[([1, 2], 0), ([3, 4], 1), ([5], 0), ([6, 7, 8], 1)], [([9], 0), ([10], 1)]]
    b = TokenBatch.from_segments(rows, pad_id=0, side="right", turns=True)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 0, 0, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 8, [1, 1, 0, 0, 0, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[0, 0, 1, 1, 0, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert b.turn_ids.tolist() == [[-1, -1, 0, 0, -1, 1, 1, 1], [-1, 0, -1, -1, -1, -1, -1, -1]]
    left = TokenBatch.from_segments(rows, pad_id=0, side="left")
    assert left.turn_ids is None
    assert left.loss_mask.tolist()[1] == [0, 0, 0, 0, 0, 0, 0, 1]
    sub = b.select([1])
    assert len(sub) == 1 and sub.turn_ids.tolist() == [b.turn_ids[1].tolist()]
    with pytest.raises(ValueError, match="loss flag"):
        TokenBatch.from_segments([[([1], 2)]], pad_id=0)


def test_position_ids_follow_the_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("micro", [1, 3])
def test_sequence_logprobs_equal_a_hand_loop(model, side, micro):
    ids, mask = pad(ROWS, PAD, side)
    with torch.no_grad():
        out = sequence_logprobs(model, ids, mask, temperature=TAU, micro_batch_size=micro, with_entropy=True)
    width = ids.shape[1]
    for i, row in enumerate(ROWS):
        hand = hand_logprobs(model, row, TAU)
        offset = 0 if side == "right" else width - len(row)
        got = out.logprobs[i, offset + 1: offset + len(row)]
        torch.testing.assert_close(got.double(), hand, atol=2e-5, rtol=0)
    # entropy of the sampling distribution (temperature applied), by hand for the longest row
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ROWS[0]])).logits[0].double() / TAU
    p = torch.softmax(logits, -1)
    hand_h = -(p * torch.log(p)).sum(-1)[:-1]
    offset = 0 if side == "right" else width - len(ROWS[0])
    torch.testing.assert_close(out.entropy[0, offset + 1:offset + len(ROWS[0])].double(), hand_h, atol=2e-5, rtol=0)


def test_left_and_right_padding_agree_and_start_skips_columns(model):
    r_ids, r_mask = pad(ROWS, PAD, "right")
    with torch.no_grad():
        full = sequence_logprobs(model, r_ids, r_mask, with_hidden=True)
        late = sequence_logprobs(model, r_ids, r_mask, start=3)
    assert torch.all(late.logprobs[:, :3] == 0)
    torch.testing.assert_close(late.logprobs[:, 3:], full.logprobs[:, 3:], atol=1e-5, rtol=0)
    assert full.hidden.shape == (len(ROWS), r_ids.shape[1], 32)
    assert torch.all(full.logprobs[:, 0] == 0)


def test_logprobs_and_entropy_from_crafted_logits():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 2]])
    z = 2.0 / 0.5, 0.0, -1.0 / 0.5
    expected0 = z[0] - math.log(sum(math.exp(v) for v in z))
    got = logprobs_from_logits(logits, labels, temperature=0.5)
    assert got[0, 0].item() == pytest.approx(expected0, abs=1e-6)
    assert got[0, 1].item() == pytest.approx(-math.log(3), abs=1e-6)
    assert entropy_from_logits(logits)[0, 1].item() == pytest.approx(math.log(3), abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, labels, temperature=0.0)


def test_masked_nll_by_hand(model):
    # row 0: loss on tokens 3..6; row 1: loss on token 2 only; row 2: loss on tokens 1 and 4
    segments = [[(ROWS[0][:3], 0), (ROWS[0][3:], 1)], [(ROWS[1][:2], 0), (ROWS[1][2:], 1)],
                [(ROWS[2][:1], 0), (ROWS[2][1:2], 1), (ROWS[2][2:4], 0), (ROWS[2][4:], 1)]]
    batch = TokenBatch.from_segments(segments, PAD, "right")
    hand = [hand_logprobs(model, r) for r in ROWS]  # hand[i][t - 1] = log p(x_t)
    picked = [hand[0][2:6], hand[1][1:2], torch.stack([hand[2][0], hand[2][3]])]
    expected = -torch.cat(picked).sum() / 7  # a token mean over the batch, not a mean of row means
    with torch.no_grad():
        got = masked_nll(model, batch, micro_batch_size=2)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(ValueError, match="no loss token"):
        masked_nll(model, TokenBatch.from_segments([[([1, 2], 0)]], PAD))


def test_masked_nll_backpropagates(model):
    batch = TokenBatch.from_segments([[(ROWS[0][:3], 0), (ROWS[0][3:], 1)]], PAD)
    model.zero_grad()
    masked_nll(model, batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_dropout_off_restores_modes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a submodule in its own mode must get it back
    with dropout_off(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training
