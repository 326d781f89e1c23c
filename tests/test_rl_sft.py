"""Supervised warm start on the search protocol: demonstrations (masks, filtering on the answer being in
the information), the masked NLL by hand, and SearchR1 running it once before RL."""

import json

import lightning as L
import pytest
import torch

from datamodules.rl_prompts import RLPromptDataModule
from training.models import load_causal_lm
from lightning_modules.search_r1 import SearchR1
from generation.logprobs import masked_nll, sequence_logprobs
from rl.envs import SearchEnv
from rl.search import BM25Search, SafeSearch
from rl.settings import PolicyLoss, SampleLog, Sampling
from rl.sft import SearchEngineDown, WarmStart, protocol_demonstrations
from training.settings import LM

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = [{"_id": "d1", "title": "France", "text": "Paris is the capital of France."},
          {"_id": "d2", "title": "Italy", "text": "Rome is the capital of Italy."}]


@pytest.fixture
def corpus_file(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    return tmp_path / "corpus.jsonl"


def test_demonstrations_mask_prompt_and_information_and_drop_unanswerable(tiny_llama_dir, corpus_file):
    _, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    search = SafeSearch(BM25Search(corpus_file), k=1)
    questions = ["capital of france", "capital of italy", "capital of italy"]
    answers = [["Paris"], ["Rome", "Roma"], ["Milan"]]  # the 3rd: its passage does not contain the answer
    demos = protocol_demonstrations(tok, ["P1: ", "P2: ", "P3: "], questions, answers, search)
    assert len(demos) == 2
    info = search.information(["capital of italy"])[0]
    assert demos.texts[1] == f"<search> capital of italy </search>\n\n{info}\n\n<answer> Rome </answer>"
    for i, prompt in enumerate(["P1: ", "P2: "]):
        n = int(demos.attention_mask[i].sum())
        ids, mask = demos.input_ids[i, :n].tolist(), demos.loss_mask[i, :n].tolist()
        p_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert mask[:p_len] == [0] * p_len  # prompt masked
        own = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
        q, a = questions[i], answers[i][0]
        assert own == f"<search> {q} </search><answer> {a} </answer>{tok.eos_token}"  # information masked
        assert tok.decode(ids) == prompt + demos.texts[i] + tok.eos_token
    assert demos.loss_mask[:, :].masked_select(demos.attention_mask == 0).sum() == 0  # padding masked
    with pytest.raises(ValueError, match="no question's information"):
        protocol_demonstrations(tok, ["P: "], ["capital of italy"], [["Milan"]], search)


def test_warm_start_blames_the_engine_when_every_search_fails(tiny_llama_dir):
    """A dead engine must not read as 'no question's information contains its answer' (a data problem)."""
    _, tok = load_causal_lm(tiny_llama_dir, device="cpu")

    def dead(queries, k):
        raise ConnectionError("connection refused")

    with pytest.raises(SearchEngineDown, match="all 2 warm-start searches failed.*connection refused"):
        protocol_demonstrations(tok, ["P: ", "Q: "], ["a", "b"], [["x"], ["y"]], SafeSearch(dead, k=1))


def test_warm_start_loss_is_mean_nll_of_the_masked_tokens(tiny_llama_dir, corpus_file):
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    search = SafeSearch(BM25Search(corpus_file), k=1)
    demos = protocol_demonstrations(tok, ["Question: a\n", "Q: b\n"], ["capital of france", "capital of italy"],
                                    [["Paris"], ["Rome"]], search)
    loss = masked_nll(model, demos, micro_batch_size=1)
    # by hand: one sequence at a time, full forward, -log p of each masked token, averaged over all of them
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(demos)):
            n = int(demos.attention_mask[i].sum())
            ids = demos.input_ids[i, :n]
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].float(), -1)
            for t in range(1, n):
                if demos.loss_mask[i, t]:
                    total -= logp[t - 1, ids[t]].item()
                    count += 1
    assert count == int(demos.loss_mask.sum())
    assert abs(loss.item() - total / count) < 1e-4
    loss.backward()  # differentiable
    assert any(p.grad is not None for p in model.parameters())


def test_search_r1_warm_start_runs_once_before_rl(tiny_llama_dir, corpus_file, tmp_path):
    qa = [{"question": "capital of france", "answers": ["Paris"]}, {"question": "capital of italy", "answers": ["Rome"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    torch.manual_seed(0)
    model = SearchR1(LM(tiny_llama_dir), env=SearchEnv(BM25Search(corpus_file), k=1, max_searches=1),
                     sampling=Sampling(group_size=2, max_turn_tokens=4, max_response_tokens=40),
                     loss=PolicyLoss(kl_coef=0.0), log_samples=SampleLog(count=0),
                     warm_start=WarmStart(questions=2, epochs=3, batch_size=2),
                     optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    model.configure_model()
    demos = protocol_demonstrations(model.tokenizer, model.prompts(["capital of france", "capital of italy"]),
                                    ["capital of france", "capital of italy"], [["Paris"], ["Rome"]], model.search)
    with torch.no_grad():
        before = masked_nll(model.policy, demos).item()
    data = RLPromptDataModule(str(tmp_path / "train.jsonl"), test_file=None, batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert bool(model.warm_started)
    with torch.no_grad():
        after = masked_nll(model.policy, demos).item()
    assert after < before  # 3 epochs at lr 1e-2 on 2 demonstrations (plus one RL step) lower their NLL
    assert "warm_started" in model.state_dict()  # a resumed run skips it
    with pytest.raises(ValueError, match="needs an environment with a search engine"):
        SearchR1(LM(tiny_llama_dir), env=None, warm_start=WarmStart(questions=2))


def test_search_r1_warm_started_policy_is_the_kl_reference(tiny_llama_dir, corpus_file, tmp_path):
    """With LoRA the reference would be the adapters-off base; after a warm start it must be the warm-started
    policy itself (KL 0 at the first RL step), not the model before the warm start."""
    qa = [{"question": "capital of france", "answers": ["Paris"]}, {"question": "capital of italy", "answers": ["Rome"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    torch.manual_seed(0)
    model = SearchR1(LM(tiny_llama_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0}),
                     env=SearchEnv(BM25Search(corpus_file), k=1, max_searches=1),
                     sampling=Sampling(group_size=2, max_turn_tokens=4, max_response_tokens=40),
                     loss=PolicyLoss(kl_coef=0.1), log_samples=SampleLog(count=0),
                     warm_start=WarmStart(questions=2, epochs=2, batch_size=2),
                     optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    model.configure_model()
    assert model.reference.mode == "copy" and "reference.model.base_model.model.lm_head.weight" in model.state_dict()
    data = RLPromptDataModule(str(tmp_path / "train.jsonl"), test_file=None, batch_size=2)
    trainer = L.Trainer(max_steps=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)  # max_steps=0: the warm start only (on_fit_start)
    assert bool(model.warm_started)
    r = model.sample(model.prompts(["capital of france"], 2))
    policy = r.old_logprobs * r.loss_mask  # the policy's own log-probs, as sampled
    ref = model.reference.logprobs(model.policy, r.tokens, model.sampling.temperature, start=min(r.prompt_lengths))
    assert torch.allclose(ref, policy, atol=1e-6)
    model.policy.eval()
    with torch.no_grad(), model.policy.disable_adapter():
        base = sequence_logprobs(model.policy, r.input_ids, r.attention_mask, temperature=model.sampling.temperature,
                                 start=min(r.prompt_lengths)).logprobs * r.loss_mask
    assert (base - policy).abs().max() > 1e-3  # the warm start moved the policy away from the base
