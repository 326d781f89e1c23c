"""The one search layer (retrieval.search) and its RL adapters (rl.search): the same hits for every user,
the current index read at every call, search failures reported on the console, and the /retrieve server's
answers to bad requests."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time

import pytest
import torch

from retrieval.bm25 import BM25
from retrieval.index import DenseIndex
from retrieval.search import BM25Retriever, DenseRetriever, Passage, load_passages, make_retriever
from rl.search import BM25Search, HTTPSearch, RetrieverSearch, SafeSearch, parse_request, serve

CORPUS = {"d0": {"title": "Paris", "text": "Paris is the capital of France."},
          "d1": {"title": "Hamlet", "text": "Hamlet was written by William Shakespeare."},
          "d2": {"title": "", "text": "The Moon landing happened in 1969."}}


def test_passages_are_title_and_text_by_one_rule():
    ps = load_passages(CORPUS)
    assert ps["d0"] == Passage("d0", "Paris", "Paris is the capital of France.")
    assert ps["d0"].contents == "Paris Paris is the capital of France." and ps["d2"].contents == CORPUS["d2"]["text"]
    assert load_passages({"x": "plain text"})["x"] == Passage("x", "", "plain text")
    with pytest.raises(ValueError, match="empty"):
        load_passages({})


def test_bm25_retriever_is_the_bm25_library_over_title_and_text():
    r = BM25Retriever(CORPUS)
    ref = BM25(list(CORPUS), [load_passages(CORPUS)[d].contents for d in CORPUS])
    assert r.search(["shakespeare hamlet", "capital"], 2) == ref.search(["shakespeare hamlet", "capital"], 2)
    hits = r.retrieve(["shakespeare hamlet"], 1)[0]
    assert hits[0].id == "d1" and hits[0].title == "Hamlet" and hits[0].score == r.search(["shakespeare hamlet"], 1)[0][0][1]
    # the RL tool is the same retriever seen as passages
    assert BM25Search(CORPUS)(["shakespeare hamlet"], 1) == [hits]


def _index(vectors: dict[str, list[float]]) -> DenseIndex:
    return DenseIndex(2).add(list(vectors), torch.tensor(list(vectors.values())))


def test_dense_retriever_reads_the_current_index_at_every_call():
    """An index given as a callable is looked up per search: swapping it (what IndexRefresh does to
    module.retrieval_index) changes what the retriever, the RL tool and the /retrieve server return."""
    holder = type("Module", (), {})()
    holder.retrieval_index = _index({"d0": [1.0, 0.0], "d1": [0.0, 1.0], "d2": [0.5, 0.5]})
    query_vectors = {"q": [1.0, 0.1]}
    r = DenseRetriever(CORPUS, index=lambda: holder.retrieval_index,
                       encode_queries=lambda qs: torch.tensor([query_vectors[q] for q in qs]))
    tool = SafeSearch(r, k=1)
    server = serve(r, port=0, block=False)
    try:
        client = HTTPSearch("http://%s:%d/retrieve" % server.server_address, timeout=5)
        assert r.search(["q"], 1)[0][0][0] == "d0" and "Doc 1(Title: Paris)" in tool.information(["q"])[0]
        assert client(["q"], 1)[0][0].id == "d0"
        holder.retrieval_index = _index({"d0": [-1.0, 0.0], "d1": [0.0, 1.0], "d2": [0.5, 0.5]})
        assert r.search(["q"], 1)[0][0][0] == "d2" and "Doc 1(Title: )" in tool.information(["q"])[0]
        assert client(["q"], 1)[0][0].id == "d2"
    finally:
        server.shutdown()
    holder.retrieval_index = None
    with pytest.raises(RuntimeError, match="no index yet"):
        r.search(["q"], 1)


def test_dense_retriever_built_from_an_encoder_matches_exact_search(tiny_bert_dir):
    from retrieval.encoders import Encoder

    enc = Encoder(tiny_bert_dir, normalize=True, max_length=32)
    r = make_retriever("dense", CORPUS, encoder=enc, query_prefix="query: ")
    texts = [load_passages(CORPUS)[d].contents for d in CORPUS]
    scores = enc.encode(["query: who wrote hamlet"], show_progress=False) @ enc.encode(texts, show_progress=False).T
    expected = sorted(zip(CORPUS, scores[0].tolist()), key=lambda x: -x[1])
    got = r.search(["who wrote hamlet"], 3)[0]
    assert [d for d, _ in got] == [d for d, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)
    with pytest.raises(ValueError, match="needs an encoder"):
        make_retriever("dense", CORPUS)
    with pytest.raises(ValueError, match="unknown retriever"):
        make_retriever("tfidf", CORPUS)


def test_search_failures_are_warned_on_the_console_rate_limited(caplog):
    def broken(queries, k):
        raise ConnectionError("retriever at http://x:8000 refused the connection")

    search = SafeSearch(broken, k=1, warn_every=3600)
    with caplog.at_level(logging.WARNING, logger="rl.search"):
        for _ in range(3):
            assert "search failed: ConnectionError" in search.information(["a", "b"])[0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "rl.search"]
    assert len(warnings) == 1 and "ConnectionError: retriever at http://x:8000 refused" in warnings[0]
    assert search.errors == 6 and search.last_errors == 2
    caplog.clear()
    every = SafeSearch(broken, k=1, warn_every=0)
    with caplog.at_level(logging.WARNING, logger="rl.search"):
        every.information(["a"])
        every.information(["b"])
    assert len([r for r in caplog.records if r.name == "rl.search"]) == 2


def test_retriever_search_adapter_and_safe_search_on_a_retriever():
    r = BM25Retriever(CORPUS)
    assert RetrieverSearch(r)(["moon landing"], 1) == r.retrieve(["moon landing"], 1)
    assert SafeSearch(r, k=1).information(["moon landing"]) == SafeSearch(RetrieverSearch(r), k=1).information(
        ["moon landing"])


# -- the /retrieve server ----------------------------------------------------------------------------

@pytest.mark.parametrize("body,message", [
    (b'["who wrote hamlet"]', "must be a JSON object"),
    (b'{"queries": ["x"], "topk": null}', "'topk' must be a positive integer, got null"),
    (b'{"queries": ["x"], "topk": 2.7}', "got 2.7"),
    (b'{"queries": ["x"], "topk": true}', "got true"),
    (b'{"queries": ["x"], "topk": 0}', "got 0"),
    (b'{"queries": "x"}', "'queries' must be a list of strings"),
    (b'{"queries": ["x"], "return_scores": "yes"}', "return_scores"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bad_requests_are_refused_with_a_reason(body, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_request(body)


def test_good_request_keeps_its_integer_topk():
    assert parse_request(b'{"queries": ["a", "b"], "topk": 2, "return_scores": true}') == (["a", "b"], 2)
    assert parse_request(b'{"queries": []}') == ([], 3)


@pytest.fixture
def server():
    def engine(queries, k):
        if "boom" in queries:
            raise RuntimeError("index shard missing")
        return RetrieverSearch(BM25Retriever(CORPUS))(queries, k)

    srv = serve(engine, port=0, block=False, max_request_bytes=2048, read_timeout=0.5)
    yield srv
    srv.shutdown()


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(*server.server_address, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    status, ctype, payload = response.status, response.getheader("Content-Type"), response.read()
    conn.close()
    return status, ctype, payload


@pytest.mark.parametrize("method,path,body,status", [
    ("POST", "/retrieve", b'{"queries": ["hamlet"], "topk": 1}', 200),
    ("POST", "/retrieve", b'["hamlet"]', 400),
    ("POST", "/retrieve", b'{"queries": ["hamlet"], "topk": null}', 400),
    ("POST", "/retrieve", b"[" * 1000 + b"]" * 1000, 400),
    ("POST", "/retrieve", b'{"queries": ["boom"], "topk": 1}', 500),
    ("POST", "/retrieve", b'{"queries": ["' + b"x" * 4096 + b'"]}', 413),
    ("POST", "/nope", b"{}", 404),
    ("GET", "/retrieve", None, 501),
    ("PUT", "/retrieve", b"{}", 501),
])
def test_server_answers_every_request_in_json(server, method, path, body, status):
    got, ctype, payload = _request(server, method, path, body, {"Content-Type": "application/json"})
    assert got == status and ctype == "application/json"
    data = json.loads(payload)
    if status == 200:
        assert data["result"][0][0]["document"]["id"] == "d1"
    else:
        assert data["error"]
    if status == 500:
        assert "RuntimeError: index shard missing" in data["error"]


def test_server_needs_a_length_and_times_out_a_stalled_body(server):
    sock = socket.create_connection(server.server_address, timeout=5)
    sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
    assert sock.recv(4096).split(b"\r\n")[0].endswith(b"411 Length Required")
    sock.close()
    sock = socket.create_connection(server.server_address, timeout=5)
    start = time.monotonic()
    sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queries\"")
    answer = b""
    while chunk := sock.recv(4096):  # the server closes the connection after the error
        answer += chunk
    assert answer.split(b"\r\n")[0].endswith(b"408 Request Timeout") and b'"error"' in answer
    assert time.monotonic() - start < 4
    sock.close()
