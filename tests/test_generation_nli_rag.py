"""NLI filter (HF classifier with labels read from config, prompted-LM judge), answer selection,
retrieve-and-read and recitation on the tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from training.models import load_causal_lm
from generation.nli import (LMJudge, NLIClassifier, calibrate_threshold, entailment_label, nli_hypothesis,
                            select_answers)
from generation.prompts import NQ_EXAMPLES, PromptFormat, prompt_format, render_message
from generation.rag import TextGenerator, read, recite_and_answer


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, device="cpu")


def _tiny_nli(path, tiny_bert_dir, id2label):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_nli_classifier_reads_entailment_label_from_config(tmp_path, tiny_bert_dir):
    # entailment deliberately last, as in bart-large-mnli (contradiction, neutral, entailment)
    path = _tiny_nli(tmp_path / "nli", tiny_bert_dir, {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"})
    nli = NLIClassifier(path, device="cpu", batch_size=2)
    assert nli.entail_id == 2
    premises = ["Paris is the capital of France.", "The cat sat on the mat.", "Water boils at 100 C."]
    hyps = [nli_hypothesis("what is the capital of france?", "Paris"), "dogs bark", "water boils at 100 degrees"]
    with torch.no_grad():
        enc = nli.tokenizer(premises, hyps, padding=True, return_tensors="pt")
        ref = torch.softmax(nli.model(**enc).logits, -1)
    torch.testing.assert_close(nli.entailment_probs(premises, hyps), ref[:, 2], atol=1e-5, rtol=1e-5)
    assert nli.entails(premises, hyps) == (ref.argmax(-1) == 2).tolist()
    nli.threshold = 0.0
    assert nli.entails(premises, hyps) == [True, True, True]


def test_nli_classifier_without_entailment_label_is_an_error(tmp_path, tiny_bert_dir):
    path = _tiny_nli(tmp_path / "nli", tiny_bert_dir, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ValueError, match="entail"):
        NLIClassifier(path, device="cpu")
    assert entailment_label({"0": "entailment", "1": "neutral", "2": "contradiction"}) == 0


def test_select_answers_and_hypothesis_by_hand():
    assert nli_hypothesis(" who wrote hamlet? ", " Shakespeare ") == "who wrote hamlet? Shakespeare"
    assert select_answers([True, False, True], ["r1", "r2", "r3"], ["c1", "c2", "c3"]) == ["r1", "c2", "r3"]
    with pytest.raises(ValueError):
        select_answers([True], ["r1", "r2"], ["c1"])


def test_lm_judge_probability_is_normalised_yes_vs_no(lm):
    model, tok = lm
    judge = LMJudge(model, tok)
    premises, hyps = ["Paris is the capital of France.", "Cats are mammals."], ["capital of france Paris", "x y"]
    probs = judge.entailment_probs(premises, hyps)
    # direct: full-sequence log-likelihood of each reply after the judge prompt, one at a time
    for i, (p, h) in enumerate(zip(premises, hyps)):
        prompt = render_message(tok, judge.template.format(premise=p, hypothesis=h))
        ll = []
        for reply in ("Yes", "No"):
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = tok(reply, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + r_ids])).logits[0], -1)
            ll.append(sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(r_ids)))
        expected = math.exp(ll[0]) / (math.exp(ll[0]) + math.exp(ll[1]))
        assert math.isclose(probs[i].item(), expected, rel_tol=1e-4)
    # by hand: p(yes)=0.2, p(no)=0.6 -> 0.2 / 0.8 = 0.25 = sigmoid(log 0.2 - log 0.6)
    assert math.isclose(torch.sigmoid(torch.tensor(math.log(0.2) - math.log(0.6))).item(), 0.25, rel_tol=1e-6)
    judge.threshold = 0.0
    assert judge.entails(premises, hyps) == [True, True]


def test_calibrate_threshold_by_hand():
    # positives 0.3, 0.4, 0.9; negatives 0.1, 0.35. Balanced accuracy (TPR + TNR) / 2 at each observed t:
    # t=0.1: (3/3 + 0/2)/2 = .5; t=0.3: (1 + 1/2)/2 = .75; t=0.35: (2/3 + 1/2)/2 = .583;
    # t=0.4: (2/3 + 1)/2 = .833; t=0.9: (1/3 + 1)/2 = .667 -> 0.4
    pos, neg = torch.tensor([0.3, 0.4, 0.9]), torch.tensor([0.1, 0.35])
    assert math.isclose(calibrate_threshold(pos, neg), 0.4, rel_tol=1e-6)
    # ties: perfectly separated sets -> the smallest threshold that separates them
    assert math.isclose(calibrate_threshold(torch.tensor([0.6, 0.8]), torch.tensor([0.1, 0.2])), 0.6, rel_tol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold(torch.tensor([]), neg)


def test_lm_judge_calibrate_sets_threshold_from_its_probabilities(lm):
    model, tok = lm
    judge = LMJudge(model, tok)
    support, unrelated, hyps = ["Paris is in France.", "Hamlet is a play."], ["Cats purr.", "Rain is wet."], ["a", "b"]
    t = judge.calibrate(support, unrelated, hyps)
    assert judge.threshold == t
    assert t == calibrate_threshold(judge.entailment_probs(support, hyps), judge.entailment_probs(unrelated, hyps))


def test_few_shot_prompt_format():
    fmt = PromptFormat(chat=False, answer_prefix="Answer:", examples=[["who wrote hamlet", "Shakespeare"]])
    assert fmt.user_message("q?") == ("Answer the question. Reply with a short answer only.\n\n"
                                      "Question: who wrote hamlet\nAnswer: Shakespeare\n\nQuestion: q?")
    assert fmt.user_message("q?", ["d1", "d2"]).endswith(
        "Question: who wrote hamlet\nAnswer: Shakespeare\n\nPassage 1: d1\n\nPassage 2: d2\n\nQuestion: q?")
    # without examples the templates render exactly as before (no stray text where {examples} was)
    assert PromptFormat().user_message("q?") == "Answer the question. Reply with a short answer only.\n\nQuestion: q?"
    with pytest.raises(ValueError, match="no \\{examples\\} field"):
        PromptFormat(template="{context} {question}", examples=[["q", "a"]])
    with pytest.raises(ValueError, match=r"examples\[0\]"):
        PromptFormat(examples=[["only a question"]])
    preset = prompt_format("few_shot")
    assert preset.examples == NQ_EXAMPLES and preset.chat is False and preset.answer_prefix == "Answer:"
    with pytest.raises(ValueError, match="unknown prompt preset"):
        prompt_format("fewshot")


def test_read_closed_book_and_recitation(lm):
    model, tok = lm
    questions = ["who wrote hamlet?", "what is the capital of france?"]
    closed = read(model, tok, questions, max_new_tokens=4)
    assert all("Passage" not in p for p in closed.prompts) and len(closed.answers) == 2
    with_docs = read(model, tok, questions, [["Hamlet is by Shakespeare."], []], max_new_tokens=4)
    assert "Passage 1: Hamlet is by Shakespeare." in with_docs.prompts[0]
    assert with_docs.prompts[1] == closed.prompts[1]
    rec = recite_and_answer(model, tok, questions, recitation_tokens=6, max_new_tokens=4)
    assert len(rec.extra["recitations"]) == 2
    for prompt, recitation in zip(rec.prompts, rec.extra["recitations"]):
        assert (f"Passage 1: {recitation}" in prompt) if recitation else ("Passage" not in prompt)
    gen = TextGenerator(model, tok, max_new_tokens=3, do_sample=True, temperature=0.7)
    assert len(gen(["write a passage", "another"])) == 2
    with pytest.raises(ValueError, match="2 questions but 1"):
        read(model, tok, questions, [["x"]], prompt_format=PromptFormat())
