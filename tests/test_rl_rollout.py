"""Multi-turn rollout with a search tool: a real tiny Llama whose next tokens are forced by a logits
processor replaying a script, so the real generate/stop/search/insert loop runs and its masks and
inserted passages can be checked token by token."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from rl.envs import SearchEnv
from rl.rollout import rollout
from rl.search import BM25Search, HTTPSearch, Passage, SafeSearch, format_information, serve

CORPUS = {
    "d1": {"title": "France", "text": "Paris is the capital of France."},
    "d2": {"title": "Germany", "text": "Berlin is the capital of Germany."},
    "d3": {"title": "Italy", "text": "Rome is the capital of Italy."},
}
SEARCH = "<think>I should look it up</think><search>capital of France</search>"
ANSWER = "<answer>Paris</answer>"


pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedPolicy(LogitsProcessor):
    """Forces, for each row, the tokens of ``script(context)``, where ``context`` is the text the row
    had when this ``generate`` call started; EOS after the script ends."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script
        self.prev, self.start, self.plans = None, 0, None

    def __call__(self, input_ids, scores):
        prev = self.prev
        new_call = prev is None or input_ids.shape[1] != prev.shape[1] + 1 or input_ids.shape[0] != prev.shape[0] \
            or not torch.equal(input_ids[:, :-1], prev)
        if new_call:
            self.start = input_ids.shape[1]
            self.plans = [self.tokenizer(self.script(self.tokenizer.decode(row, skip_special_tokens=True)),
                                         add_special_tokens=False)["input_ids"] for row in input_ids]
        self.prev = input_ids.clone()
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for i, plan in enumerate(self.plans):
            forced[i, plan[step] if step < len(plan) else self.tokenizer.eos_token_id] = 0.0
        return forced


def script(context: str) -> str:
    """Question 'A' searches once then answers; 'B' answers at once; 'C' always searches."""
    searched = context.count("<information>")
    if "question A" in context:
        return SEARCH if searched == 0 else ANSWER
    if "question B" in context:
        return ANSWER
    return SEARCH


@pytest.fixture(scope="module")
def policy(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tokenizer


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_rollout_masks_and_inserted_passages(policy):
    model, tokenizer = policy
    search = SafeSearch(BM25Search(CORPUS), k=1)
    # The first prompt ends with Search-R1's example answer: it must not count as a stop (nor as an answer).
    prompts = ["Answer question A please. For example, <answer> Beijing </answer>", "question B",
               "Here is a longer prompt for question C, which searches."]
    processor = ScriptedPolicy(tokenizer, script)
    out = rollout(model, tokenizer, prompts, SearchEnv(search, max_searches=2), max_turn_tokens=40, max_response_tokens=200,
                  generation_kwargs={"logits_processor": LogitsProcessorList([processor])})

    info = "\n\n" + format_information([Passage("d1", "France", "Paris is the capital of France.")]) + "\n\n"
    assert info == "\n\n<information>Doc 1(Title: France) Paris is the capital of France.</information>\n\n"
    # Expected response of each row as (token ids, mask) segments.
    expected = [
        [(ids(tokenizer, SEARCH), 1), (ids(tokenizer, info), 0), (ids(tokenizer, ANSWER), 1)],
        [(ids(tokenizer, ANSWER), 1)],
        # budget B = 2 searches, then the final turn's search is not executed and ends the sequence
        [(ids(tokenizer, SEARCH), 1), (ids(tokenizer, info), 0), (ids(tokenizer, SEARCH), 1),
         (ids(tokenizer, info), 0), (ids(tokenizer, SEARCH), 1)],
    ]
    assert out.num_searches.tolist() == [1, 0, 2]
    assert out.search_errors.tolist() == [0, 0, 0]
    for i, (prompt, segments) in enumerate(zip(prompts, expected)):
        p = ids(tokenizer, prompt)
        resp = [t for seg, _ in segments for t in seg]
        mask = [m for seg, m in segments for _ in seg]
        n = len(p) + len(resp)
        assert out.prompt_lengths[i] == len(p)
        assert out.input_ids[i, :n].tolist() == p + resp
        assert out.attention_mask[i].tolist() == [1] * n + [0] * (out.input_ids.shape[1] - n)
        assert out.loss_mask[i].tolist() == [0] * len(p) + mask + [0] * (out.input_ids.shape[1] - n)
        assert out.info_mask[i, len(p):n].tolist() == [1 - m for m in mask]
        assert out.response_lengths[i].item() == sum(mask)
        # old log-probs: finite and negative where the policy acted, exactly 0 elsewhere
        lp = out.old_logprobs[i]
        assert torch.all(lp[out.loss_mask[i] == 0] == 0)
        assert torch.all(lp[out.loss_mask[i] == 1] < 0)
    assert out.responses[0].endswith("<answer>Paris</answer>")
    assert "Doc 1(Title: France) Paris is the capital of France." in out.responses[0]
    assert out.responses[1] == ANSWER


def test_old_logprobs_match_a_full_forward_of_the_policy(policy):
    model, tokenizer = policy
    torch.manual_seed(0)
    out = rollout(model, tokenizer, ["hello there", "a much longer prompt than the first one"], None,
                  max_turn_tokens=6, max_response_tokens=6, temperature=0.7)
    # Recompute log p(x_t | x_<t) at the sampling temperature for one row alone (no padding) and compare
    # at its generated tokens: old log-probs at temperature 1 would make the first importance ratio != 1.
    for i in range(2):
        n = int(out.attention_mask[i].sum())
        x = out.input_ids[i:i + 1, :n]
        logits = model(input_ids=x).logits[0, :-1] / 0.7
        ref = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
        m = out.loss_mask[i, 1:n].bool()
        assert m.sum() > 0
        torch.testing.assert_close(out.old_logprobs[i, 1:n][m], ref[m], atol=1e-4, rtol=1e-4)


def test_a_search_tool_that_raises_becomes_an_information_message(policy):
    model, tokenizer = policy

    def broken(queries, k):
        raise RuntimeError("index offline")

    search = SafeSearch(broken, k=1)
    out = rollout(model, tokenizer, ["Answer question A please."], SearchEnv(search, max_searches=2), max_turn_tokens=40,
                  generation_kwargs={"logits_processor": LogitsProcessorList([ScriptedPolicy(tokenizer, script)])})
    assert "<information>search failed: RuntimeError: index offline</information>" in out.responses[0]
    assert out.responses[0].endswith(ANSWER)
    assert out.num_searches.tolist() == [1] and out.search_errors.tolist() == [1]
    assert search.errors == 1


def test_safe_search_timeout_and_wrong_arity_are_counted():
    def slow(queries, k):
        time.sleep(1.0)
        return [[] for _ in queries]

    search = SafeSearch(slow, k=1, timeout=0.1)
    assert search.information(["q1", "q2"]) == \
        ["<information>search failed: TimeoutError: search took longer than 0.1 s</information>"] * 2
    assert search.errors == 2
    short = SafeSearch(lambda queries, k: [[]], k=1)
    assert "engine returned 1 result lists for 2 queries" in short.information(["a", "b"])[0]
    assert short.errors == 2
    empty = SafeSearch(lambda queries, k: [[] for _ in queries], k=1)
    assert empty.information(["a"]) == ["<information>no results</information>"] and empty.errors == 0


def test_bm25_search_over_http_matches_the_local_engine():
    engine = BM25Search(CORPUS)
    server = serve(engine, port=0, block=False)
    try:
        host, port = server.server_address
        client = HTTPSearch(f"http://{host}:{port}/retrieve", timeout=5)
        queries = ["capital of Germany", "Rome Italy"]
        local, remote = engine(queries, 2), client(queries, 2)
        assert [p.id for p in local[0]][0] == "d2" and [p.id for p in local[1]][0] == "d3"
        assert [[(p.id, p.title, p.text) for p in r] for r in remote] == [[(p.id, p.title, p.text) for p in r] for r in local]
        assert [p.score for r in remote for p in r] == pytest.approx([p.score for r in local for p in r])
        # a failing server answer becomes an <information> error through SafeSearch
        bad = SafeSearch(HTTPSearch(f"http://{host}:{port}/nope", timeout=5), k=1)
        assert "search failed: HTTPError" in bad.information(["x"])[0]
    finally:
        server.shutdown()


class RecordScores(LogitsProcessor):
    """Keeps the model's raw next-token logits, keyed by the row's text so far (padding dropped)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, {}

    def __call__(self, input_ids, scores):
        for row, s in zip(input_ids, scores):
            self.seen[self.tokenizer.decode(row, skip_special_tokens=True)] = s.clone()
        return scores


def uneven_script(context: str) -> str:
    """Rows that stop at different tokens of the same turn, with queries (hence information blocks) of
    different lengths: A thinks briefly, searches once, answers; C thinks at length and searches twice
    with different queries; D searches a long query, then thinks and answers; B answers at once."""
    searched = context.count("<information>")
    if "question A" in context:
        return "<think>hm</think><search>France</search>" if searched == 0 else ANSWER
    if "question C" in context:
        if searched == 0:
            return "<think>I should really look this one up with care</think><search>Rome Italy</search>"
        return "<search>capital of Germany Berlin city</search>"
    if "question D" in context:
        if searched == 0:
            return "<search>the largest city of Spain, on the Manzanares river</search>"
        return "<think>the passage says Rome, so the answer is Rome</think><answer>Rome</answer>"
    return ANSWER


def test_kv_cache_reuse_across_turns_gives_the_logits_of_a_full_prefill(policy):
    """With the cache kept across turns (finished rows dropped, information appended after masked
    padding), every next-token distribution equals the one from prefilling the compact context. Rows
    stop at different tokens within a turn and insert information of different lengths, so a row that
    attended the padding generated after another row's stop (or its own) would get different logits."""
    model, tokenizer = policy
    corpus = {**CORPUS, "d4": {"title": "Spain", "text": "Madrid, on the Manzanares river, is the capital and the "
                                                        "largest city of Spain."}}
    search = SafeSearch(BM25Search(corpus), k=1)
    prompts = ["Answer question A please.", "question B", "Here is a longer prompt for question C, which searches.",
               "question D?"]
    runs = {}
    for reuse in (False, True):
        recorder = RecordScores(tokenizer)
        processors = LogitsProcessorList([recorder, ScriptedPolicy(tokenizer, uneven_script)])
        out = rollout(model, tokenizer, prompts, SearchEnv(search, max_searches=2), max_turn_tokens=40, max_response_tokens=200,
                      generation_kwargs={"logits_processor": processors}, reuse_cache=reuse)
        runs[reuse] = (out, recorder.seen)
    (plain, plain_scores), (cached, cached_scores) = runs[False], runs[True]
    assert torch.equal(plain.input_ids, cached.input_ids) and torch.equal(plain.loss_mask, cached.loss_mask)
    assert plain.num_searches.tolist() == [1, 0, 2, 1]
    # the rows' turns end at different lengths, and their information blocks differ in length
    assert len({len(t[0]) for t in plain.turn_texts}) == 4
    info_lengths = plain.info_mask.sum(1).tolist()
    assert info_lengths[0] != info_lengths[3] and info_lengths[1] == 0
    # contexts after an inserted information block: these are the ones a reused cache could get wrong
    after_info = [k for k in plain_scores if "</information>" in k]
    assert len(after_info) > 10 and set(plain_scores) == set(cached_scores)
    for key, expected in plain_scores.items():
        torch.testing.assert_close(cached_scores[key], expected, atol=1e-4, rtol=1e-4)
