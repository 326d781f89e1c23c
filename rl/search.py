"""The search tool of a rollout: a plain callable ``search(queries, k) -> list[list[Passage]]``.

Engines: :class:`BM25Search` (default, bm25s), :class:`DenseSearch` (encoder + faiss) and
:class:`HTTPSearch`, a client of a retrieval server with Search-R1's ``/retrieve`` interface
(:func:`serve` runs one over any engine, so that at scale the retriever lives on its own machine).
:class:`SafeSearch` wraps an engine for the rollout: an exception or a timeout becomes an
``<information>`` message and is counted, never a crash.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from retrieval.beir import load_corpus


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0


SearchFn = Callable[[Sequence[str], int], list[list[Passage]]]


class SearchEngine:
    """Base of the engines, so a config can name any of them (or a user's subclass) with ``class_path``.
    Any plain callable with the same signature works where a ``SearchFn`` is expected."""

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(queries, k)")


def _corpus_passages(corpus: str | Path | dict) -> list[Passage]:
    docs = load_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    return [Passage(doc_id, (d.get("title") or "").strip(), d["text"]) for doc_id, d in docs.items()]


class BM25Search(SearchEngine):
    """BM25 (``retrieval.bm25.BM25``) over a BEIR ``corpus.jsonl`` (or a ``{id: {title, text}}`` dict),
    indexing title and text."""

    def __init__(self, corpus: str | Path | dict, k1: float = 0.9, b: float = 0.4):
        from retrieval.bm25 import BM25

        self.passages = {p.id: p for p in _corpus_passages(corpus)}
        self.bm25 = BM25(list(self.passages), [f"{p.title} {p.text}".strip() for p in self.passages.values()], k1, b)

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        hits = self.bm25.search(list(queries), k)
        return [[Passage(d, self.passages[d].title, self.passages[d].text, s) for d, s in row] for row in hits]


class DenseSearch(SearchEngine):
    """Dense retrieval: ``retrieval.encoders.Encoder`` embeds the corpus once into a faiss
    ``retrieval.index.DenseIndex``; queries are embedded with ``query_prefix`` (``"query: "`` for e5)."""

    def __init__(self, corpus: str | Path | dict, model_name_or_path: str = "all-MiniLM-L6-v2",
                 pooling: str = "mean", normalize: bool = True, max_length: int = 256, query_prefix: str = "",
                 passage_prefix: str = "", factory: str = "Flat", batch_size: int = 64):
        from retrieval.encoders import Encoder
        from retrieval.index import DenseIndex

        self.passages = {p.id: p for p in _corpus_passages(corpus)}
        self.encoder = Encoder(model_name_or_path, pooling, normalize, max_length)
        self.query_prefix = query_prefix
        emb = self.encoder.encode([f"{passage_prefix}{p.title} {p.text}".strip() for p in self.passages.values()],
                                  batch_size=batch_size, show_progress=False)
        self.index = DenseIndex(emb.shape[1], factory).add(list(self.passages), emb)

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        q = self.encoder.encode([self.query_prefix + x for x in queries], show_progress=False)
        return [[Passage(d, self.passages[d].title, self.passages[d].text, s) for d, s in row]
                for row in self.index.search(q, k)]


# -- Search-R1's /retrieve interface -------------------------------------------------------------------
# request:  {"queries": [str], "topk": int, "return_scores": bool}
# response: {"result": [[{"document": {"id": str, "contents": "\"title\"\ntext"}, "score": float}, ...], ...]}

def _to_contents(p: Passage) -> str:
    return f'"{p.title}"\n{p.text}'


def _from_contents(doc_id: str, contents: str, score: float) -> Passage:
    title, _, text = contents.partition("\n")
    return Passage(doc_id, title.strip('"'), text, score)


def serve(search: SearchFn, host: str = "127.0.0.1", port: int = 8000, block: bool = True) -> ThreadingHTTPServer:
    """Serve ``search`` at ``POST http://host:port/retrieve``. With ``block=False`` it runs in a daemon
    thread and the server is returned (call ``.shutdown()``); port 0 picks a free port
    (``server.server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/retrieve":
                self.send_error(404, f"unknown path {self.path}; POST /retrieve")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                queries, k = body["queries"], int(body.get("topk", 3))
                if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                    raise ValueError("field 'queries' must be a list of strings")
                hits = search(queries, k)
                result = [[{"document": {"id": p.id, "contents": _to_contents(p)}, "score": p.score} for p in row]
                          for row in hits]
                payload, status = {"result": result}, 200
            except (KeyError, ValueError, json.JSONDecodeError) as e:
                payload, status = {"error": f"bad request: {e!r}"}, 400
            except Exception as e:  # the engine failed: report it to the client, keep serving
                payload, status = {"error": f"search failed: {e!r}"}, 500
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the training log clean
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    if block:
        server.serve_forever()
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class HTTPSearch(SearchEngine):
    """Client of a Search-R1-style ``/retrieve`` server (ours from :func:`serve`, or Search-R1's own)."""

    def __init__(self, url: str = "http://127.0.0.1:8000/retrieve", timeout: float = 30.0):
        self.url, self.timeout = url, timeout

    def __call__(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        data = json.dumps({"queries": list(queries), "topk": k, "return_scores": True}).encode()
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            result = json.loads(response.read())["result"]
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
    counted in ``self.errors`` (and per call in ``self.last_errors``)."""

    def __init__(self, search: SearchFn, k: int = 3, timeout: float | None = 30.0, max_passage_chars: int | None = None):
        self.search, self.k, self.timeout, self.max_passage_chars = search, k, timeout, max_passage_chars
        self.errors = 0
        self.last_errors = 0
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
            return [f"<information>search failed: {type(e).__name__}: {e}</information>"] * len(queries)
        out = []
        for row in hits:
            if self.max_passage_chars:
                row = [Passage(p.id, p.title, p.text[:self.max_passage_chars], p.score) for p in row]
            out.append(format_information(row) if row else "<information>no results</information>")
        return out


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
