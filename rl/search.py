"""The search tool of a rollout: a plain callable ``search(queries, k) -> list[list[Passage]]``.

The engines are thin adapters over the one search layer, :mod:`retrieval.search`: :class:`BM25Search`
(bm25s) and :class:`DenseSearch` (encoder + faiss) build a retriever from a corpus file, and
:class:`RetrieverSearch` wraps any retriever already built (e.g. the one a training module searches, so
the tool sees the index that ``callbacks.IndexRefresh`` swaps in). :class:`HTTPSearch` is a client of a
retrieval server with Search-R1's ``/retrieve`` interface (:func:`serve` runs one over any engine, so that
at scale the retriever lives on its own machine; it accepts a rollout batch of connections at once, and the
client retries with backoff when a connection is refused or reset). :class:`SafeSearch` wraps an engine for
the rollout: an
exception or a timeout becomes an ``<information>`` message, is counted, and is reported on the console
(a rate-limited warning), never a crash.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from retrieval.search import BM25Retriever, DenseRetriever, Passage, Retriever

__all__ = ["Passage", "SearchFn", "SearchEngine", "RetrieverSearch", "BM25Search", "DenseSearch", "HTTPSearch",
           "SafeSearch", "SearchServer", "serve", "format_information", "transient"]

log = logging.getLogger(__name__)

SearchFn = Callable[[Sequence[str], int], list[list[Passage]]]


class SearchEngine:
    """Base of the engines, so a config can name any of them (or a user's subclass) with ``class_path``.
    Any plain callable with the same signature works where a ``SearchFn`` is expected."""

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(queries, k)")


class RetrieverSearch(SearchEngine):
    """A :class:`retrieval.search.Retriever` as the search tool: its hits as passages."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever

    @property
    def passages(self) -> dict[str, Passage]:
        return self.retriever.passages

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        return self.retriever.retrieve(list(queries), k)


class BM25Search(RetrieverSearch):
    """BM25 over a BEIR ``corpus.jsonl`` (or a ``{id: {title, text}}`` dict), indexing title and text."""

    def __init__(self, corpus: str | Path | dict, k1: float = 0.9, b: float = 0.4):
        super().__init__(BM25Retriever(corpus, k1=k1, b=b))


class DenseSearch(RetrieverSearch):
    """Dense retrieval: ``retrieval.encoders.Encoder`` embeds the corpus once into a faiss index; queries are
    embedded with ``query_prefix`` (``"query: "`` for e5)."""

    def __init__(self, corpus: str | Path | dict, model_name_or_path: str = "all-MiniLM-L6-v2",
                 pooling: str = "mean", normalize: bool = True, max_length: int = 256, query_prefix: str = "",
                 passage_prefix: str = "", factory: str = "Flat", batch_size: int = 64):
        from retrieval.encoders import Encoder

        encoder = Encoder(model_name_or_path, pooling, normalize, max_length)
        super().__init__(DenseRetriever(corpus, encoder, factory=factory, query_prefix=query_prefix,
                                        passage_prefix=passage_prefix, batch_size=batch_size))


# -- Search-R1's /retrieve interface -------------------------------------------------------------------
# request:  {"queries": [str], "topk": int, "return_scores": bool}
# response: {"result": [[{"document": {"id": str, "contents": "\"title\"\ntext"}, "score": float}, ...], ...]}

def _to_contents(p: Passage) -> str:
    return f'"{p.title}"\n{p.text}'


def _from_contents(doc_id: str, contents: str, score: float) -> Passage:
    title, _, text = contents.partition("\n")
    return Passage(doc_id, title.strip('"'), text, score)


class BadRequest(ValueError):
    """A request the server refuses with 400 (the client's fault, not the engine's)."""


def parse_request(raw: bytes) -> tuple[list[str], int]:
    """``(queries, topk)`` from a ``/retrieve`` body; anything else than a JSON object with a list of
    strings ``queries``, an optional positive integer ``topk`` (default 3; not a float, bool or null) and
    an optional boolean ``return_scores`` is a :class:`BadRequest`."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object {{queries, topk, return_scores}}, got a {type(body).__name__}")
    queries = body.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("field 'queries' must be a list of strings")
    topk = body.get("topk", 3)
    if type(topk) is not int or topk < 1:  # noqa: E721 (bool is an int subclass; true must not mean 1)
        raise BadRequest(f"field 'topk' must be a positive integer, got {json.dumps(topk)}")
    if not isinstance(body.get("return_scores", True), bool):
        raise BadRequest(f"field 'return_scores' must be true or false, got {json.dumps(body['return_scores'])}")
    return queries, topk


class SearchServer(ThreadingHTTPServer):
    """One thread per connection (as many as the rollout sends at once), and a listen backlog of
    ``request_queue_size`` connections: socketserver's default of 5 reset half of 100 simultaneous clients."""

    daemon_threads = True
    request_queue_size = 1024


def serve(search: SearchFn | Retriever, host: str = "127.0.0.1", port: int = 8000, block: bool = True,
          max_request_bytes: int = 1 << 20, read_timeout: float = 30.0, backlog: int = 1024) -> ThreadingHTTPServer:
    """Serve ``search`` at ``POST http://host:port/retrieve``. With ``block=False`` it runs in a daemon
    thread and the server is returned (call ``.shutdown()``); port 0 picks a free port
    (``server.server_address``). ``backlog``: connections the kernel queues before the server accepts them
    (at least a rollout batch's searches; the kernel caps it at ``net.core.somaxconn``).

    Every answer is JSON: 200 ``{"result": ...}``; errors ``{"error": ...}`` with 400 (malformed body or
    fields), 404 (another path), 408 (the body did not arrive within ``read_timeout`` seconds), 411 (no
    Content-Length), 413 (body over ``max_request_bytes``), 501 (a method other than POST) and 500 (the
    engine failed)."""

    if isinstance(search, Retriever):
        search = RetrieverSearch(search)

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # socket timeout: a client that stops sending cannot hold a thread

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):  # http.server's own errors (404, 501, ...) as JSON
            self.close_connection = True
            self._reply(code, {"error": f"{code} {message or self.responses.get(code, ('',))[0]}"})

        def do_POST(self):  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/retrieve":
                self.send_error(404, f"unknown path {self.path}; POST /retrieve")
                return
            length = self.headers.get("Content-Length")
            if length is None:
                self.send_error(411, "Content-Length required")
                return
            if not length.strip().isdigit():
                self.send_error(400, f"bad Content-Length {length!r}")
                return
            if int(length) > max_request_bytes:
                self.send_error(413, f"request body of {int(length)} bytes; the limit is {max_request_bytes}")
                return
            try:
                raw = self.rfile.read(int(length))
            except TimeoutError:
                self.send_error(408, f"the request body did not arrive within {read_timeout} s")
                return
            if len(raw) < int(length):
                self.send_error(400, f"request body ended after {len(raw)} of {length} bytes")
                return
            try:
                queries, k = parse_request(raw)
            except BadRequest as e:
                self._reply(400, {"error": f"bad request: {e}"})
                return
            try:
                hits = search(queries, k)
                result = [[{"document": {"id": p.id, "contents": _to_contents(p)}, "score": p.score} for p in row]
                          for row in hits]
            except Exception as e:  # the engine failed: report it to the client, keep serving
                log.warning("/retrieve: search failed: %s: %s", type(e).__name__, e)
                self._reply(500, {"error": f"search failed: {type(e).__name__}: {e}"})
                return
            self._reply(200, {"result": result})

        def log_message(self, *args):  # keep the training log clean
            pass

    server = SearchServer((host, port), Handler, bind_and_activate=False)
    server.request_queue_size = backlog
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    if block:
        server.serve_forever()
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


RETRY_STATUS = (502, 503, 504)  # a proxy or a server restarting: worth another try


def transient(err: BaseException) -> bool:
    """Whether a request failed in a way another try may not: the connection refused (server not up yet),
    reset or closed (server overloaded or restarting), or a 502/503/504. A timeout is not retried (the wait
    would multiply), nor a 4xx/500 (the request or the engine is wrong)."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRY_STATUS
    if isinstance(err, urllib.error.URLError):
        err = err.reason
    return isinstance(err, (ConnectionError, http.client.IncompleteRead, http.client.BadStatusLine))


class HTTPSearch(SearchEngine):
    """Client of a Search-R1-style ``/retrieve`` server (ours from :func:`serve`, or Search-R1's own).

    A request that fails transiently (:func:`transient`) is sent again up to ``retries`` times, after
    ``backoff * 2**i`` seconds (at most ``max_backoff``); then the last error is raised, with the tries named."""

    def __init__(self, url: str = "http://127.0.0.1:8000/retrieve", timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 8.0):
        if retries < 0 or backoff < 0:
            raise ValueError(f"HTTPSearch: retries and backoff must be >= 0, got {retries}, {backoff}")
        self.url, self.timeout = url, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.retried = 0  # requests sent again (all calls)

    def _post(self, data: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        data = json.dumps({"queries": list(queries), "topk": k, "return_scores": True}).encode()
        for attempt in range(self.retries + 1):
            try:
                body = self._post(data)
                break
            except Exception as err:
                if not transient(err):
                    raise
                if attempt == self.retries:
                    raise ConnectionError(f"{self.url}: {attempt + 1} tries failed, the last with "
                                          f"{type(err).__name__}: {err}") from err
                self.retried += 1
                time.sleep(min(self.backoff * 2 ** attempt, self.max_backoff))
        result = json.loads(body)["result"]
        return [[_from_contents(h["document"].get("id", ""), h["document"]["contents"], float(h.get("score", 0.0)))
                 for h in row] for row in result]


def format_information(passages: Sequence[Passage]) -> str:
    """Search-R1's block: ``<information>Doc 1(Title: t) text\\nDoc 2(...)...</information>``."""
    body = "".join(f"Doc {i + 1}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages))
    return f"<information>{body.strip()}</information>"


class SafeSearch:
    """The rollout's view of a search engine: ``information(queries) -> list[str]`` of ``<information>``
    blocks. An engine that raises, returns the wrong number of results, or exceeds ``timeout`` seconds
    yields ``<information>search failed: ...</information>`` for the affected queries; failures are
    counted in ``self.errors`` (and per call in ``self.last_errors``) and reported as a warning on the
    console naming the error, at most once every ``warn_every`` seconds (with the count in between).

    ``search`` is a ``SearchFn`` or a :class:`retrieval.search.Retriever` (searched through
    :class:`RetrieverSearch`)."""

    def __init__(self, search: SearchFn | Retriever, k: int = 3, timeout: float | None = 30.0,
                 max_passage_chars: int | None = None, warn_every: float = 60.0):
        self.search = RetrieverSearch(search) if isinstance(search, Retriever) else search
        self.k, self.timeout, self.max_passage_chars = k, timeout, max_passage_chars
        self.errors = 0
        self.last_errors = 0
        self.warn_every = warn_every
        self._last_warning: float | None = None
        self._unreported = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=1) if timeout is not None else None

    def _run(self, queries: list[str]) -> list[list[Passage]]:
        if self._pool is None:
            return self.search(queries, self.k)
        future = self._pool.submit(self.search, queries, self.k)
        try:
            return future.result(timeout=self.timeout)
        except cf.TimeoutError:
            # The stuck call keeps the worker; give later calls a fresh one.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = cf.ThreadPoolExecutor(max_workers=1)
            raise TimeoutError(f"search took longer than {self.timeout} s") from None

    def _warn(self, error: Exception, failed: int) -> None:
        self._unreported += failed
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < self.warn_every:
            return
        log.warning("search failed for %d queries (%d since the last warning, %d in all): %s: %s",
                    failed, self._unreported, self.errors, type(error).__name__, error)
        self._last_warning, self._unreported = now, 0

    def information(self, queries: Sequence[str]) -> list[str]:
        queries = list(queries)
        self.last_errors = 0
        if not queries:
            return []
        try:
            hits = self._run(queries)
            if len(hits) != len(queries):
                raise RuntimeError(f"engine returned {len(hits)} result lists for {len(queries)} queries")
        except Exception as e:
            self.errors += len(queries)
            self.last_errors = len(queries)
            self._warn(e, len(queries))
            return [f"<information>search failed: {type(e).__name__}: {e}</information>"] * len(queries)
        out = []
        for row in hits:
            if self.max_passage_chars:
                row = [Passage(p.id, p.title, p.text[:self.max_passage_chars], p.score) for p in row]
            out.append(format_information(row) if row else "<information>no results</information>")
        return out


def failure_summary(searches: int, failed: int, who: str = "SearchR1") -> str | None:
    """The end-of-run line about failed searches (None when none failed)."""
    if searches and failed == searches:
        return (f"{who}: EVERY search of this run failed ({failed} of {searches}): the policy trained on error "
                "messages, not on search results")
    if failed:
        return (f"{who}: {failed} of {searches} searches of this run failed ({100 * failed / searches:.1f}%); those "
                "rollouts read an error message instead of passages (the console's search warnings name the errors)")
    return None


def main(argv: list[str] | None = None) -> None:
    """``python -m rl.search --corpus data/nq_pool/corpus.jsonl --port 8000``: serve BM25 over a BEIR corpus
    at ``/retrieve`` (point ``HTTPSearch`` at it)."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a BM25 search engine with Search-R1's /retrieve interface.")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl[.gz]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    engine = BM25Search(args.corpus)
    print(f"serving BM25 over {len(engine.passages)} passages at http://{args.host}:{args.port}/retrieve", flush=True)
    serve(engine, args.host, args.port)


if __name__ == "__main__":
    main()
