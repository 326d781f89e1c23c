"""The LM core's shared pieces after the redesign: the one stop-on-strings rule (the prompt is never searched),
the settings groups of the evaluation modules (the dense encoder's two truncation lengths, BM25's stemmer,
HyDE's template), and settings that come back as dicts from saved hyperparameters."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    from training.models import load_causal_lm

    return load_causal_lm(tiny_llama_dir, device="cpu")


def test_a_stop_string_is_searched_in_the_generated_text_only(lm):
    """The prompt ends with a newline and the first generated token is a newline: "\\n\\n" spans the boundary
    but was not generated, so the row goes on (transformers' stop_strings stopped it: every few-shot
    recitation came back empty). Once the continuation holds "\\n\\n" the row stops; rows are independent."""
    from generation.stopping import StopOnStrings

    _, tok = lm
    prompt = tok("Recite a passage.\nQuestion: who wrote Hamlet?\n", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    word = tok(" Hamlet", add_special_tokens=False)["input_ids"]
    assert len(prompt) > 2 and len(newline) == 1
    stop = StopOnStrings(tok, ["\n\n"], prompt_length=len(prompt))
    assert stop(torch.tensor([prompt + newline + word]), None).tolist() == [False]
    assert stop(torch.tensor([prompt + newline]), None).tolist() == [False]
    assert stop(torch.tensor([prompt + word + newline + newline]), None).tolist() == [True]
    # rows of one batch stop on their own
    assert stop(torch.tensor([prompt + newline + newline, prompt + word + word]), None).tolist() == [True, False]

def test_generate_stops_each_row_at_its_own_stop_string_and_never_on_the_prompt(lm):
    """Every prompt ends with the stop string, so a rule that searched the prompt would stop every row after
    one token. The stop string is taken from row 0's free continuation: row 0 ends at the token that completes
    it; the rows whose continuation does not hold it run to max_new_tokens as without stop strings."""
    from generation.generate import generate

    model, tok = lm
    # a random tiny LM repeats its prompt's last word: each row has its own continuation
    prompts = ["zebra: the river", "A much longer prompt with a few more words zebra: a castle", "zebra: 42"]
    free = generate(model, tok, prompts, max_new_tokens=8, batch_size=3, stop_strings=None)
    assert all("zebra:" not in f for f in free) and len(set(free)) == 3
    assert generate(model, tok, prompts, max_new_tokens=8, batch_size=3, stop_strings=("zebra:",)) == free

    def cut(text: str, stop: str) -> str:  # the shortest token prefix holding the stop string
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return next((tok.decode(ids[:k]) for k in range(1, len(ids) + 1) if stop in tok.decode(ids[:k])), text)

    stop = tok.decode(tok(free[0], add_special_tokens=False)["input_ids"][:3])
    assert stop.strip() and all(stop not in f for f in free[1:])
    stopped = generate(model, tok, prompts, max_new_tokens=8, batch_size=3, stop_strings=(stop,))
    assert stopped == [cut(f, stop) for f in free] and stopped[0] != free[0]

def test_dense_retriever_truncates_queries_and_passages_at_their_own_lengths(tiny_bert_dir):
    from retrieval.encoders import Encoder
    from retrieval.search import retriever_from_settings
    from retrieval.settings import EncoderSettings

    passages = {"a": "alpha beta gamma delta " * 8, "b": "one two three four five six seven eight nine ten"}
    settings = EncoderSettings(tiny_bert_dir, query_max_length=4, passage_max_length=32)
    retriever = retriever_from_settings("dense", passages, encoder=settings)
    query = "a long question with many words in it about alpha and gamma and delta"
    reference = Encoder(tiny_bert_dir, normalize=True, max_length=32)
    short = reference.encode([query], max_length=4, show_progress=False)
    long = reference.encode([query], max_length=32, show_progress=False)
    assert (short - long).abs().max() > 1e-3  # otherwise the check below could not tell the lengths apart
    torch.testing.assert_close(retriever.encode_queries([query]), short)
    torch.testing.assert_close(retriever.encode([passages["a"]]), reference.encode([passages["a"]], show_progress=False))


def test_bm25_settings_reach_the_index():
    """Stemming joins "running" and "run": without a stemmer the query "run" finds only the exact word."""
    from retrieval.search import retriever_from_settings
    from retrieval.settings import BM25Settings

    passages = {"a": "running fast every morning", "b": "a run in the park"}
    stemmed = retriever_from_settings("bm25", passages, bm25=BM25Settings())
    plain = retriever_from_settings("bm25", passages, bm25=BM25Settings(stemmer=None))
    assert {d for d, _ in stemmed.search(["run"], 5)[0]} == {"a", "b"}
    assert {d for d, _ in plain.search(["run"], 5)[0]} == {"b"}


def test_hyde_template_is_a_name_or_a_template_with_a_query_field():
    from retrieval.query_enhancement import HYDE_TEMPLATES, HyDE

    assert HyDE(template="scifact").prompt == HYDE_TEMPLATES["scifact"]
    assert HyDE(template="Write about {query}.").prompt == "Write about {query}."
    with pytest.raises(ValueError, match="hyde.template 'webb'"):
        HyDE(template="webb")


def test_settings_from_saved_hyperparameters_are_rebuilt(tiny_llama_dir):
    """A module rebuilt from its hparams (training.sharding.export_whole) gets its groups as dicts, and a
    module built in Python saves them as dicts (a checkpoint torch.load(weights_only=True) can read)."""
    from generation.settings import Generation
    from lightning_modules.rag_eval import RAGEvaluator
    from training.settings import LM

    module = RAGEvaluator(method="closed_book", lm=LM(tiny_llama_dir), generation=Generation(max_new_tokens=3))
    assert module.hparams.lm == {**LM(tiny_llama_dir).__dict__} and module.hparams.generation["max_new_tokens"] == 3
    from training.sharding import rebuild

    again = rebuild(module)  # what an FSDP2 export does
    assert again.lm_settings == LM(tiny_llama_dir) and again.generation == Generation(max_new_tokens=3)
