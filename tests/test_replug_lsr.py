"""REPLUG LSR: the loss against hand computation (both KL directions, gamma != beta), gradients reach the
retriever and never the LM, the LM-score cache (equal to fresh scoring, invalidated by another LM or
prompt, only new candidates scored), retrieval that excludes the query's own passage, and fits of both
set-ups through the CLI (fit, index refresh, test metrics, export, re-run from the cache, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retrieval.lsr import LMScoreCache, lm_logliks, lsr_loss, module_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the loss ------------------------------------------------------------------------------------------------
# Two queries, three documents, gamma = 0.5, beta = 2.0:
#   s      = [[0.9, 0.5, 0.1], [0.2, 0.4, 0.3]]        s / gamma   = [[1.8, 1.0, 0.2], [0.4, 0.8, 0.6]]
#   loglik = [[-2, -5, -3], [-10, -4, -6]]             loglik/beta = [[-1, -2.5, -1.5], [-5, -2, -3]]
# query 1: P_R = (e^1.8, e^1.0, e^0.2) / 9.989332 = (0.605611, 0.272118, 0.122271)
#          Q   = (e^-1, e^-2.5, e^-1.5) / 0.673094 = (0.546549, 0.121952, 0.331499)
#          KL(P_R||Q) = 0.605611 ln(0.605611/0.546549) + 0.272118 ln(0.272118/0.121952)
#                       + 0.122271 ln(0.122271/0.331499) = 0.062144 + 0.218369 - 0.121915 = 0.158598
#          KL(Q||P_R) = 0.546549 ln(0.546549/0.605611) + 0.121952 ln(0.121952/0.272118)
#                       + 0.331499 ln(0.331499/0.122271) = -0.056084 - 0.097857 + 0.330611 = 0.176670
# query 2: P_R = (e^0.4, e^0.8, e^0.6) / 5.539079 = (0.269307, 0.401760, 0.328933)
#          Q   = (e^-5, e^-2, e^-3) / 0.191915 = (0.035119, 0.705385, 0.259496)
#          KL(P_R||Q) = 0.400457, KL(Q||P_R) = 0.263983
# mean over the batch: KL(P_R||Q) = (0.158598 + 0.400457) / 2 = 0.279527; KL(Q||P_R) = 0.220326
SCORES = [[0.9, 0.5, 0.1], [0.2, 0.4, 0.3]]
LOGLIKS = [[-2.0, -5.0, -3.0], [-10.0, -4.0, -6.0]]


def test_lsr_loss_by_hand_both_directions():
    s, ll = torch.tensor(SCORES), torch.tensor(LOGLIKS)
    forward = lsr_loss(s, ll, gamma=0.5, beta=2.0)              # default: the arXiv direction
    torch.testing.assert_close(forward, torch.tensor(0.279527), atol=1e-5, rtol=0)
    torch.testing.assert_close(lsr_loss(s, ll, 0.5, 2.0, "p_r||q"), forward)
    torch.testing.assert_close(lsr_loss(s, ll, 0.5, 2.0, "q||p_r"), torch.tensor(0.220326), atol=1e-5, rtol=0)
    # per query: the loss is the mean over the batch of the per-query KL, not a sum or a mean over B * K
    torch.testing.assert_close(lsr_loss(s[:1], ll[:1], 0.5, 2.0), torch.tensor(0.158598), atol=1e-5, rtol=0)
    torch.testing.assert_close(lsr_loss(s[1:], ll[1:], 0.5, 2.0, "q||p_r"), torch.tensor(0.263983), atol=1e-5, rtol=0)


def test_lsr_loss_zero_when_the_distributions_agree_and_gradient_direction():
    # s / gamma = loglik / beta row by row: P_R = Q, KL = 0 in both directions
    ll = torch.tensor(LOGLIKS)
    s = (ll / 2.0 * 0.5).requires_grad_()
    for direction in ("p_r||q", "q||p_r"):
        assert lsr_loss(s, ll, 0.5, 2.0, direction).item() == pytest.approx(0.0, abs=1e-7)
    # otherwise the gradient raises the score of the document the LM prefers most (doc 0 for query 1)
    s = torch.zeros(1, 3, requires_grad=True)
    lsr_loss(s, ll[:1], 0.5, 2.0).backward()
    assert s.grad[0].argmin().item() == 0 and s.grad[0, 0] < 0


def test_lsr_loss_rejects_bad_input():
    s, ll = torch.tensor(SCORES), torch.tensor(LOGLIKS)
    with pytest.raises(ValueError, match="direction"):
        lsr_loss(s, ll, direction="kl")
    with pytest.raises(ValueError, match="gamma and beta"):
        lsr_loss(s, ll, gamma=0.0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        lsr_loss(s, ll[:, :2])
    with pytest.raises(ValueError, match="non-finite"):
        lsr_loss(s, ll.clone().fill_(float("-inf")))


# -- the cache -----------------------------------------------------------------------------------------------
def test_cache_scores_only_new_triples_and_survives_reopening(tmp_path):
    calls = []

    def score(docs, xs, ys):
        calls.append(list(zip(xs, docs, ys)))
        return torch.tensor([-float(len(d) + len(x) + 10 * len(y)) for d, x, y in zip(docs, xs, ys)])

    cache = LMScoreCache(tmp_path / "c.sqlite", "lm-a", "prompt-a")
    first = lm_logliks(["x1", "x2"], [["a", "bb", "a"], ["a", "ccc", "dddd"]], ["y", "yy"], score, cache)
    # (x1, a, y) appears twice: scored once; (x2, a, yy) is another triple
    assert [len(c) for c in calls] == [5] and cache.misses == 5 and cache.hits == 1
    assert first.tolist() == [[-13.0, -14.0, -13.0], [-23.0, -25.0, -26.0]]
    # after an index refresh, x1's candidates are (bb, a, eeeee): only eeeee reaches the LM
    second = lm_logliks(["x1"], [["bb", "a", "eeeee"]], ["y"], score, cache)
    assert calls[-1] == [("x1", "eeeee", "y")] and second.tolist() == [[-14.0, -13.0, -17.0]]
    # another target is another triple
    lm_logliks(["x1"], [["a"]], ["yyy"], score, cache)
    assert calls[-1] == [("x1", "a", "yyy")]
    cache.close()
    # a re-run opens the same file: nothing is scored again
    n = len(calls)
    reopened = LMScoreCache(tmp_path / "c.sqlite", "lm-a", "prompt-a")
    assert len(reopened) == 7
    again = lm_logliks(["x1", "x2"], [["a", "bb", "a"], ["a", "ccc", "dddd"]], ["y", "yy"], score, reopened)
    assert len(calls) == n and torch.equal(again, first) and reopened.misses == 0
    # without a cache every call scores (duplicates within the call still once)
    lm_logliks(["x1"], [["a", "a"]], ["y"], score, None)
    assert calls[-1] == [("x1", "a", "y")]


def test_cache_is_keyed_by_lm_and_prompt(tmp_path):
    path = tmp_path / "c.sqlite"
    LMScoreCache(path, "lm-a", "prompt-a").put({LMScoreCache.key("x", "d", "y"): -1.5})
    assert LMScoreCache(path, "lm-a", "prompt-a").get([LMScoreCache.key("x", "d", "y")]) == {
        LMScoreCache.key("x", "d", "y"): -1.5}
    assert LMScoreCache(path, "lm-b", "prompt-a").get([LMScoreCache.key("x", "d", "y")]) == {}
    assert LMScoreCache(path, "lm-a", "prompt-b").get([LMScoreCache.key("x", "d", "y")]) == {}


def test_module_fingerprint_follows_the_weights_not_the_path(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    a.save_pretrained(tmp_path / "copy")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert module_fingerprint(a) == module_fingerprint(b)
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert module_fingerprint(a) != module_fingerprint(b)


# -- the module ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_llama_dir(tiny_llama_dir, tmp_path_factory) -> str:
    """The tiny Llama with one weight changed: another LM, same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    path = tmp_path_factory.mktemp("other_llama")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return str(path)


def _module(tiny_bert_dir, tiny_llama_dir, train_passage_encoder=True, loss=None, **scoring):
    """The module with its settings groups: ``loss`` the LSRLoss fields, ``scoring`` the LMScoring ones."""
    from lightning_modules.replug_lsr import ReplugLSR
    from retrieval.lsr import LSRLoss
    from retrieval.lsr_lm import LMScoring
    from retrieval.settings import EncoderSettings
    from training.settings import LM

    model = ReplugLSR(EncoderSettings(tiny_bert_dir, query_max_length=16, passage_max_length=24), LM(tiny_llama_dir),
                      train_passage_encoder, loss=LSRLoss(**{"top_k": 3, **(loss or {})}),
                      scoring=LMScoring(**{"batch_size": 4, **scoring}))
    model.configure_model()
    model.configure_model()     # idempotent
    return model


QUERIES = ["who wrote the red book", "when did the river flood"]
DOCS = [["The red book was written by Anna Smith in 1901.", "Rivers flood in spring.", "Bread is baked in ovens."],
        ["The river flooded in 1953 after a storm.", "Anna Smith wrote books.", "Cats sleep a lot."]]
TARGETS = ["Anna Smith", "1953"]


def test_cached_lm_scores_equal_fresh_scores_and_are_invalidated_by_lm_or_prompt(
        tiny_bert_dir, tiny_llama_dir, other_llama_dir, tmp_path):
    from generation.prompts import PromptFormat
    from generation.scoring import score_triples

    cache = str(tmp_path / "scores.sqlite")
    model = _module(tiny_bert_dir, tiny_llama_dir, cache=cache)
    fresh = model.lm_scores(QUERIES, DOCS, TARGETS)
    # what generation.scoring gives for the same triples, one by one, with the module's prompt and " " prefix
    direct = torch.stack([score_triples(model.frozen.model, model.frozen.tokenizer, docs, [q] * 3, [" " + y] * 3,
                                        prompt_format=model.prompt) for q, docs, y in zip(QUERIES, DOCS, TARGETS)])
    torch.testing.assert_close(fresh, direct, atol=1e-4, rtol=1e-5)
    assert model.score_cache.misses == 6 and model.score_cache.hits == 0
    # under the trainer's autocast (bf16-mixed) the LM still scores in its own dtype: the cached numbers hold
    cache_obj, model.score_cache = model.score_cache, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model.lm_scores(QUERIES, DOCS, TARGETS), fresh, atol=1e-4, rtol=1e-5)
    model.score_cache = cache_obj
    again = model.lm_scores(QUERIES, DOCS, TARGETS)
    assert torch.equal(again, fresh) and model.score_cache.hits == 6 and model.score_cache.misses == 6
    # a second module with the same LM and prompt (a re-run) reads everything from the file
    rerun = _module(tiny_bert_dir, tiny_llama_dir, cache=cache)
    assert torch.equal(rerun.lm_scores(QUERIES, DOCS, TARGETS), fresh) and rerun.score_cache.misses == 0
    # another LM, another prompt or another target prefix: nothing is reused, and the numbers differ
    for lm_dir, kw in ((other_llama_dir, {}), (tiny_llama_dir, {"prompt": "zero_shot_chat"}),
                       (tiny_llama_dir, {"target_prefix": ""}),
                       (tiny_llama_dir, {"prompt": PromptFormat(chat=False, answer_prefix="A:")}),
                       # the per-token mean, and prompts cut to their last 16 tokens, are other numbers too
                       (tiny_llama_dir, {"reduction": "mean"}), (tiny_llama_dir, {"max_length": 16})):
        other = _module(tiny_bert_dir, lm_dir, cache=cache, **kw)
        scores = other.lm_scores(QUERIES, DOCS, TARGETS)
        assert other.score_cache.misses == 6 and other.score_cache.hits == 0, kw
        assert not torch.allclose(scores, fresh), kw


def test_settings_groups_reach_the_encoders_and_the_lm(tiny_bert_dir, tiny_llama_dir):
    """``encoder`` and ``lm`` are the models' settings, not defaults that a dropped field falls back to; the frozen
    scorer refuses what only a trained LM uses."""
    from lightning_modules.replug_lsr import ReplugLSR
    from retrieval.settings import EncoderSettings
    from training.precision import lm_precision
    from training.settings import LM

    encoder = EncoderSettings(tiny_bert_dir, pooling="cls", query_max_length=16, passage_max_length=24, precision="bf16")
    model = ReplugLSR(encoder, LM(tiny_llama_dir, dtype="bfloat16", precision="bf16"), train_passage_encoder=False)
    model.configure_model()
    for enc in (model.passage_encoder, model.query_encoder):
        assert (enc.pooling, enc.precision) == ("cls", "bf16")
    assert next(model.frozen.model.parameters()).dtype == torch.bfloat16 and lm_precision(model.frozen.model) == "bf16"
    with pytest.raises(ValueError, match="frozen scorer"):
        ReplugLSR(encoder, LM(tiny_llama_dir, lora={"r": 4})).configure_model()


def test_a_directly_built_module_checkpoints_plain_settings(tiny_bert_dir, tiny_llama_dir, tmp_path):
    """Built without LightningCLI, the module saves its settings groups as LightningCLI does (plain dicts): the
    checkpoint loads with ``weights_only=True``, and ``load_from_checkpoint`` gives the groups back as dataclasses."""
    import lightning as L

    from generation.prompts import PromptFormat
    from lightning_modules.replug_lsr import ReplugLSR

    model = _module(tiny_bert_dir, tiny_llama_dir, loss={"gamma": 0.5, "direction": "q||p_r"},
                    prompt=PromptFormat(chat=False, answer_prefix="A:"), target_prefix="")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "direct.ckpt")
    saved = torch.load(tmp_path / "direct.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["loss"] == {"top_k": 3, "gamma": 0.5, "beta": 0.1, "direction": "q||p_r"}
    restored = ReplugLSR.load_from_checkpoint(tmp_path / "direct.ckpt")
    assert (restored.encoder, restored.lm, restored.loss, restored.scoring, restored.replug) == (
        model.encoder, model.lm, model.loss, model.scoring, model.replug)
    assert restored.prompt == model.prompt and restored.prompt.answer_prefix == "A:"
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in restored.state_dict().items())


@pytest.mark.parametrize("train_passage_encoder", [True, False])
def test_gradients_reach_the_retriever_and_never_the_lm(tiny_bert_dir, tiny_llama_dir, train_passage_encoder):
    from training.schedule import decay_groups
    from retrieval.lsr import lsr_loss as loss_fn

    model = _module(tiny_bert_dir, tiny_llama_dir, train_passage_encoder=train_passage_encoder)
    model.train()
    lm = model.frozen.model
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())
    # the LM is no part of the module: not in its parameters, state dict or optimizer groups
    lm_params = {id(p) for p in lm.parameters()}
    assert not lm_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith("frozen") or "lm_head" in k for k in model.state_dict())
    assert not lm_params & {id(p) for g in decay_groups(model) for p in g["params"]}
    logliks = model.lm_scores(QUERIES, DOCS, TARGETS)
    assert not logliks.requires_grad
    scores = model.retriever_scores(QUERIES, DOCS)
    assert scores.shape == (2, 3) and scores.requires_grad
    loss_fn(scores, logliks, 0.1, 0.1).backward()
    assert all(p.grad is None for p in lm.parameters())
    q_grads = [p.grad for p in model.q_encoder.parameters() if p.requires_grad]
    assert q_grads and any(g is not None and g.abs().sum() > 0 for g in q_grads)
    passage_grads = [p.grad for p in model.passage_encoder.parameters()]
    if train_passage_encoder:   # shared: one encoder for both sides
        assert model.query_encoder is None
    else:                       # Atlas: the passage side stays frozen
        assert all(g is None for g in passage_grads) and not any(p.requires_grad for p in model.passage_encoder.parameters())
    # the scores are the cosine of the embeddings (normalised, in [-1, 1]) and match the search layer's index
    with torch.no_grad():
        q = model.encode_queries(QUERIES)
        p = model.encode_passages([d for docs in DOCS for d in docs]).view(2, 3, -1)
        torch.testing.assert_close(scores.detach(), torch.einsum("bh,bkh->bk", q, p), atol=1e-5, rtol=1e-5)


def test_training_step_passes_gamma_beta_and_direction_to_the_loss(tiny_bert_dir, tiny_llama_dir):
    """The module's step computes KL(Q || P_R) with P_R = softmax(s / gamma), Q = softmax(log P_LM / beta) from its
    own retrieval, scores and LM scores (gamma != beta and the non-default direction, so that a swap or a dropped
    option changes the number)."""
    gamma, beta = 0.02, 0.5
    model = _module(tiny_bert_dir, tiny_llama_dir, loss={"gamma": gamma, "beta": beta, "direction": "q||p_r"})
    model.eval()    # no dropout: the step and the check below encode alike
    passages = {f"d{i}": d for i, d in enumerate(d for docs in DOCS for d in docs)}
    model.attach_corpus(passages)
    model.build_index(passages)
    batch = {"inputs": QUERIES, "targets": TARGETS, "exclude": [[], []]}
    loss = model.training_step(batch, 0)
    hits = model.retrieve(QUERIES, 3)
    docs = [[passages[d] for d, _ in row] for row in hits]
    with torch.no_grad():
        s, ll = model.retriever_scores(QUERIES, docs), model.lm_scores(QUERIES, docs, TARGETS)
    p_r, q = torch.softmax(s / gamma, -1), torch.softmax(ll / beta, -1)
    want = (q * (q.log() - p_r.log())).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-4)
    # the inputs are such that the wrong temperatures or the other direction give another number
    swapped = (torch.softmax(ll / gamma, -1), torch.softmax(s / beta, -1))
    others = [(swapped[0] * (swapped[0].log() - swapped[1].log())).sum(-1).mean(),
              (p_r * (p_r.log() - q.log())).sum(-1).mean()]
    assert all(abs(o - want) > 1e-3 for o in others), (want, others)   # 100x the tolerance above


def test_shared_encoder_gets_gradient_through_both_sides(tiny_bert_dir, tiny_llama_dir):
    """With one shared encoder (the paper), s(d, x) = E(x) . E(d) is differentiated through E(x) and E(d): the
    gradient is the sum of the query side's and the passage side's (each computed with the other detached)."""
    model = _module(tiny_bert_dir, tiny_llama_dir, train_passage_encoder=True)
    model.eval()
    params = [p for p in model.passage_encoder.parameters() if p.requires_grad]
    weights = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

    def grads(scores):
        return torch.autograd.grad((scores * weights).sum(), params, allow_unused=True)

    def tok(texts, n):
        return model.passage_encoder.tokenize(texts, n)

    full = grads(model.retriever_scores(QUERIES, DOCS))
    q = model.passage_encoder(**tok(QUERIES, 16))
    p = model.passage_encoder(**tok([d for docs in DOCS for d in docs], 24)).view(2, 3, -1)
    query_side = grads(torch.einsum("bh,bkh->bk", q, p.detach()))
    passage_side = grads(torch.einsum("bh,bkh->bk", q.detach(), p))
    zero = torch.zeros(())
    assert sum(float(g.abs().sum()) for g in passage_side if g is not None) > 0
    for f, a, b in zip(full, query_side, passage_side):
        torch.testing.assert_close(f if f is not None else zero, (a if a is not None else zero) + (b if b is not None else zero),
                                   atol=1e-6, rtol=1e-4)


# -- data ----------------------------------------------------------------------------------------------------
def _write_qa(root: Path) -> Path:
    colors = ["red", "green", "blue", "white"]
    corpus = [{"_id": f"p{i}", "title": f"item{i}",
               "text": f"passage {i} about subject {i % 3}: the {colors[i % 4]} item{i} was made in year {1900 + i} "
                       f"by maker{i} in town{i % 5}, far from the sea and the hills of region {i % 2}."}
              for i in range(14)]
    qs = [{"id": f"q{i}", "question": f"when was the {colors[i % 4]} item{i} made", "answers": [f"{1900 + i}"],
           "gold_id": f"p{i}"} for i in range(10)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs[:6]))
    (root / "test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs[6:]))
    return root


def test_lm_datamodule_splits_passages_and_excludes_their_own(tmp_path):
    from datamodules.lsr import LSRLanguageModelingDataModule, split_passage

    assert split_passage("a b c d e") == ("a b", "c d e")
    root = _write_qa(tmp_path / "pool")
    dm = LSRLanguageModelingDataModule(str(root), num_train=5, num_test=3, min_words=20, batch_size=2)
    dm.setup()
    train, test = dm.splits["train"], dm.splits["test"]
    assert len(train) == 5 and len(test) == 3 and not {r["id"] for r in train} & {r["id"] for r in test}
    for r in train + test:
        assert r["exclude"] == [r["id"]] and f"{r['input']} {r['target']}" == " ".join(dm.passages[r["id"]].split())
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"ids", "inputs", "targets", "exclude", "gold_ids"}
    with pytest.raises(ValueError, match="fewer than num_train"):
        bad = LSRLanguageModelingDataModule(str(root), num_train=20, num_test=3)
        bad.setup()


def test_qa_datamodule_rejects_unknown_gold_passage(tmp_path):
    from datamodules.lsr import LSRQADataModule

    root = _write_qa(tmp_path / "pool")
    (root / "bad.jsonl").write_text(json.dumps({"id": "z", "question": "q?", "answers": ["a"], "gold_id": "nope"}) + "\n")
    dm = LSRQADataModule(str(root), train_file=str(root / "bad.jsonl"), test_file=None)
    with pytest.raises(ValueError, match=r"bad.jsonl: question 'z': gold_id 'nope'"):
        dm.setup()


# -- through the CLI -----------------------------------------------------------------------------------------
def _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, *extra):
    root = _write_qa(tmp_path / "pool")
    return ["--config", "configs/replug_lsr_nq.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.lm.name_or_path", tiny_llama_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.loss.top_k", "3",
            "--model.init_args.replug.k", "2", "--model.init_args.replug.max_new_tokens", "3",
            "--model.init_args.scoring.batch_size", "6", "--model.init_args.warmup", "0",
            "--model.init_args.optimizer.init_args.lr", "1e-3",
            "--model.init_args.scoring.cache", str(tmp_path / "cache" / "scores.sqlite"),
            "--data.init_args.corpus", str(root), "--data.init_args.train_file", str(root / "train.jsonl"),
            "--data.init_args.test_file", str(root / "test.jsonl"), "--data.init_args.batch_size", "3",
            "--data.init_args.eval_batch_size", "2",
            "--trainer.callbacks.init_args.every_n_steps", "1", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            *extra]


def test_qa_fit_refresh_test_export_and_rerun_from_cache(tiny_bert_dir, tiny_llama_dir, tmp_path):
    from callbacks import IndexRefresh
    from train import cli_main

    args = _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--trainer.max_steps", "2")
    cli = cli_main(args)
    model, trainer = cli.model, cli.trainer
    assert trainer.global_step == 2
    refresh = next(c for c in trainer.callbacks if isinstance(c, IndexRefresh))
    assert refresh.num_refreshes == 2
    # the index the module searches is the refreshed one... until test, which re-encodes the final weights
    lm_fp = model.frozen.fingerprint
    metrics = trainer.callback_metrics
    for key in ("test/ndcg@10", "test/gold_recall@10", "test/answer_recall@1", "test/answer_recall@5",
                "test/replug_em", "test/replug_f1"):
        assert key in metrics and 0 <= metrics[key].item() <= 1, key
    # every test question's answer is its gold passage's year: recall@10 over a 14-passage corpus sees it
    assert metrics["test/gold_recall@10"].item() > 0
    # 2 steps x 3 questions x 3 documents scored, at most (repeated candidates hit the cache)
    assert 0 < model.score_cache.misses <= 18 and len(model.score_cache) == model.score_cache.misses
    # the LM did not change; the retriever did
    from transformers import AutoModel

    from retrieval.lsr_lm import FrozenLM
    from training.models import load_causal_lm

    assert FrozenLM(*load_causal_lm(tiny_llama_dir, device="cpu")).fingerprint == lm_fp
    initial = AutoModel.from_pretrained(tiny_bert_dir)
    assert module_fingerprint(model.passage_encoder.model) != module_fingerprint(initial)
    # export: sentence-transformers loads it and embeds as the trained encoder does
    from sentence_transformers import SentenceTransformer

    export = Path(trainer.log_dir) / "export"
    texts = ["when was the red item0 made", "passage 3 about subject 0"]
    st = torch.tensor(SentenceTransformer(str(export), device="cpu").encode(texts))
    torch.testing.assert_close(st, model.passage_encoder.encode(texts, show_progress=False), atol=1e-4, rtol=1e-3)
    # a re-run of the same fit finds every LM score in the cache
    rerun = cli_main(["fit", *args])
    assert rerun.model.score_cache.misses == 0 and rerun.model.score_cache.hits > 0


def test_two_process_fsdp2_default_run_fits_tests_and_exports(tiny_bert_dir, tiny_llama_dir, tmp_path):
    """`train.py --config configs/replug_lsr_nq.yaml --config configs/trainer/fsdp2_cpu.yaml` (Lightning starts the
    second process): fit with index refreshes, the test of the best (sharded) checkpoint, the export."""
    from conftest import run_train_py
    from transformers import AutoModel

    args = _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--trainer.max_steps", "2",
                    "--data.init_args.batch_size", "1", "--config", "configs/trainer/fsdp2_cpu.yaml")
    proc = run_train_py(args, RAGKIT_PRECISION="fp32")
    assert "test/replug_em" in proc.stdout
    export = next((tmp_path / "runs").glob("*/version_*/export"))
    exported = AutoModel.from_pretrained(export).state_dict()
    initial = AutoModel.from_pretrained(tiny_bert_dir).state_dict()
    assert any(not torch.equal(exported[k], initial[k]) for k in initial)   # the trained encoder, whole


def test_qa_resume_from_checkpoint(tiny_bert_dir, tiny_llama_dir, tmp_path):
    from train import cli_main

    args = _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--model.init_args.replug.k", "0")
    first = cli_main(["fit", *args, "--trainer.max_steps", "2"])
    ckpt = first.trainer.checkpoint_callback.last_model_path or first.trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 2 and state["optimizer_states"]
    assert torch.isfinite(first.trainer.callback_metrics["train/loss"])
    assert 0 <= first.trainer.callback_metrics["train/top1_agreement"] <= 1
    assert not any(k.startswith("frozen") or "lm_head" in k for k in state["state_dict"])  # the LM is not saved
    saved = {k: v.clone() for k, v in state["state_dict"].items()}
    resumed = cli_main(["fit", *args, "--trainer.max_steps", "4", "--trainer.max_epochs", "10", "--ckpt_path", ckpt])
    assert resumed.trainer.global_step == 4
    now = resumed.model.state_dict()
    assert set(now) == set(saved)
    assert any(not torch.equal(now[k], saved[k]) for k in saved)        # it trained on from there
    # the resumed optimizer was restored: Adam's step count continues from 2
    opt_state = resumed.trainer.optimizers[0].state
    assert max(int(s["step"]) for s in opt_state.values()) == 4


def test_lm_setup_fit_excludes_own_passage_and_reports_perplexity(tiny_bert_dir, tiny_llama_dir, tmp_path):
    from train import cli_main

    root = _write_qa(tmp_path / "pool")
    emb = tmp_path / "emb"
    args = ["--config", "configs/replug_lsr_lm.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.lm.name_or_path", tiny_llama_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.loss.top_k", "3",
            "--model.init_args.replug.k", "2", "--model.init_args.warmup", "0",
            "--model.init_args.scoring.cache", str(tmp_path / "scores.sqlite"),
            "--model.init_args.embeddings_dir", str(emb),
            "--data.init_args.corpus", str(root), "--data.init_args.num_train", "4", "--data.init_args.num_test", "3",
            "--data.init_args.min_words", "20", "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"]
    cli = cli_main(args)
    model, dm = cli.model, cli.datamodule
    assert cli.trainer.global_step == 2
    m = cli.trainer.callback_metrics
    for key in ("test/ppl_no_retrieval", "test/ppl_replug", "test/bpb_no_retrieval", "test/bpb_replug"):
        assert key in m and torch.isfinite(m[key]) and m[key] > 0, key
    # bits per byte and perplexity describe the same log-likelihood
    # (ppl = exp(nll / tokens), bpb = nll / (ln 2 * bytes)): their ratio of logs is bytes/tokens * ln 2, equal for both rows
    ratio = [m[f"test/bpb_{r}"].item() / torch.log(m[f"test/ppl_{r}"]).item() for r in ("no_retrieval", "replug")]
    assert ratio[0] == pytest.approx(ratio[1], rel=1e-6)
    # the query's own passage is never retrieved, even when it is the best match
    rows = dm.splits["train"] + dm.splits["test"]
    hits = model.retrieve([r["input"] for r in rows], 3, [r["exclude"] for r in rows])
    plain = model.retrieve([r["input"] for r in rows], 1)
    assert all(r["id"] not in [d for d, _ in h] and len(h) == 3 for r, h in zip(rows, hits))
    assert any(p[0][0] == r["id"] for p, r in zip(plain, rows))     # without the exclusion it would be there
    # Atlas variant: the passage embeddings were written once, under the encoder's key, and reused by the test
    stores = list(emb.iterdir())
    assert len(stores) == 1 and (stores[0] / "meta.json").is_file()
    assert model.query_encoder is not None


@pytest.mark.parametrize("stop", [3, 2], ids=["mid_epoch", "epoch_boundary"])
def test_qa_resume_equals_an_uninterrupted_run(tiny_bert_dir, tiny_llama_dir, stop, tmp_path):
    """4 steps in one run == ``stop`` steps, a checkpoint, a stop, and the rest resumed from it (6 questions in
    batches of 3: step 3 stops mid-epoch, step 2 at the boundary). The shared encoder's index is refreshed every
    2 steps: stopped at step 3, the run was searching the index of step 2's weights, which the checkpoint holds
    and the resumed run re-encodes the corpus with; at step 2 the checkpoint follows a refresh and holds none.
    The runs share one score cache: the uninterrupted run scores every triple with the LM, the resumed one
    reads them back, and must not see a different number."""
    from callbacks import IndexRefresh
    from retrieval.lsr_retriever import IndexWeights
    from test_resume import assert_same_weights, full_and_resumed

    args = _qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--model.init_args.replug.k", "0",
                    "--model.init_args.optimizer.init_args.lr", "1e-2", "--trainer.callbacks.init_args.every_n_steps",
                    "2", "--trainer.logger", "false", "--trainer.enable_model_summary", "false",
                    "--trainer.max_epochs", "-1")
    full, resumed = full_and_resumed(args, total=4, stop=stop, tmp_path=tmp_path)
    assert full.model.score_cache.misses > 0 and resumed.model.score_cache.misses == 0
    assert next(c for c in full.trainer.callbacks if isinstance(c, IndexRefresh)).num_refreshes == 2
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert (IndexWeights.KEY in ckpt) == (stop % 2 == 1)
    assert_same_weights(full, resumed)


def test_lm_resume_equals_an_uninterrupted_run(tiny_bert_dir, tiny_llama_dir, tmp_path):
    """The language-modelling set-up (Atlas's variant: the query encoder trains, the passage side and its
    embeddings store are frozen): 3 steps in one run == 1 step, a checkpoint mid-epoch, and 2 more resumed."""
    from test_resume import assert_same_weights, full_and_resumed

    root = _write_qa(tmp_path / "pool")
    args = ["--config", "configs/replug_lsr_lm.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.lm.name_or_path", tiny_llama_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.loss.top_k", "3",
            "--model.init_args.replug.k", "2", "--model.init_args.warmup", "0",
            "--model.init_args.optimizer.init_args.lr", "1e-2",
            "--model.init_args.scoring.cache", str(tmp_path / "scores.sqlite"),
            "--model.init_args.embeddings_dir", str(tmp_path / "emb"),
            "--data.init_args.corpus", str(root), "--data.init_args.num_train", "4", "--data.init_args.num_test", "3",
            "--data.init_args.min_words", "20", "--data.init_args.batch_size", "2",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "-1"]
    full, resumed = full_and_resumed(args, total=3, stop=1, tmp_path=tmp_path)
    assert resumed.model.query_encoder is not None
    assert_same_weights(full, resumed)
