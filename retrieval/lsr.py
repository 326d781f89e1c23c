"""REPLUG LSR (LM-supervised retrieval, Shi et al. 2023): the loss, and a disk cache of the frozen LM's
log-likelihoods.

For a query x with gold continuation y and the top-k documents D' of the current retriever:

    P_R(d | x)    = exp(s(d, x) / gamma) / sum_{d' in D'} exp(s(d', x) / gamma)          (retriever, with gradient)
    Q(d | x, y)   = exp(log P_LM(y | d, x) / beta) / sum_{d' in D'} exp(log P_LM(y | d', x) / beta)   (LM, frozen)
    loss          = (1 / |B|) sum_{x in B} KL(P_R(. | x) || Q(. | x, y))

Q is a softmax over log-likelihoods: on raw probabilities of a multi-token y (all near 0) it is uniform.
The LM's scores do not depend on the retriever, so they are cached by (LM, prompt, x, d, y): re-runs,
later epochs and candidates that stay in the top-k after an index refresh are not scored again.

The LM's side (the frozen scorer, its settings, the REPLUG evaluation): retrieval/lsr_lm.py; the index the
retriever searches during training: retrieval/lsr_index.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DIRECTIONS = ("p_r||q", "q||p_r")


@dataclass
class LSRLoss:
    """The settings of the loss (``--model.init_args.loss.top_k 8``; a config overrides single fields).

    Args:
        top_k: retrieved documents per input, the D' of the loss (paper: 20).
        gamma / beta: temperatures of P_R and Q (paper: 0.1 and 0.1).
        direction: ``p_r||q`` (arXiv, default) or ``q||p_r`` (NAACL, official code); see :func:`lsr_loss`.
    """
    top_k: int = 20
    gamma: float = 0.1
    beta: float = 0.1
    direction: str = "p_r||q"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"loss.direction {self.direction!r}: expected one of {DIRECTIONS}")
        if self.gamma <= 0 or self.beta <= 0:
            raise ValueError(f"loss.gamma and loss.beta must be positive, got {self.gamma}, {self.beta}")
        if self.top_k < 1:
            raise ValueError(f"loss.top_k must be >= 1, got {self.top_k}")


def lsr_loss(retriever_scores: torch.Tensor, lm_logliks: torch.Tensor, gamma: float = 0.1, beta: float = 0.1,
             direction: str = "p_r||q") -> torch.Tensor:
    """Mean over the batch of the KL divergence between the retrieval likelihood and the LM likelihood.

    Args:
        retriever_scores: (B, K) similarities s(d, x) of each query's K retrieved documents, with gradient.
        lm_logliks: (B, K) log P_LM(y | d, x) of the gold continuation given each document (no gradient
            flows into them: the LM only supervises).
        gamma / beta: the temperatures of P_R and Q.
        direction: ``"p_r||q"``: KL(P_R || Q) = sum_d P_R(d) (log P_R(d) - log Q(d)), the arXiv version
            (default); ``"q||p_r"``: KL(Q || P_R) = sum_d Q(d) (log Q(d) - log P_R(d)), the NAACL version and
            the official code (which also averages over B * K elements with ``KLDivLoss(reduction='mean')``;
            here both directions sum over documents and average over queries).
    """
    if retriever_scores.dim() != 2 or retriever_scores.shape != lm_logliks.shape:
        raise ValueError(f"lsr_loss: retriever_scores {tuple(retriever_scores.shape)} and lm_logliks "
                         f"{tuple(lm_logliks.shape)} must both be (B, K)")
    if gamma <= 0 or beta <= 0:
        raise ValueError(f"lsr_loss: gamma and beta must be positive, got gamma={gamma}, beta={beta}")
    if direction not in DIRECTIONS:
        raise ValueError(f"lsr_loss: unknown direction {direction!r}; expected one of {DIRECTIONS}")
    if not torch.isfinite(lm_logliks).all():
        raise ValueError("lsr_loss: lm_logliks has non-finite values")
    log_p_r = torch.log_softmax(retriever_scores.float() / gamma, dim=-1)                 # (B, K)
    log_q = torch.log_softmax(lm_logliks.detach().float().to(log_p_r.device) / beta, dim=-1)
    if direction == "p_r||q":
        kl = (log_p_r.exp() * (log_p_r - log_q)).sum(-1)
    else:
        kl = (log_q.exp() * (log_q - log_p_r)).sum(-1)
    return kl.mean()


# -- identities: what makes two LM scores the same number ------------------------------------------------
def _digest(h: "hashlib._Hash") -> str:
    return h.hexdigest()[:32]


def module_fingerprint(model: torch.nn.Module) -> str:
    """Hash of a model's class, config (without the path it was loaded from) and every parameter and buffer
    (names, dtypes, shapes, bytes): two models share it only if they compute the same function, wherever they
    are stored. Tied weights are hashed once."""
    h = hashlib.blake2b()
    h.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        # where the model was loaded from is no part of what it computes: a copy elsewhere is the same LM
        settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    seen = set()
    for name, t in model.state_dict(keep_vars=False).items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() == 0 or key in seen:
            continue
        seen.add(key)
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return _digest(h)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of a tokenizer's class, vocabulary, special tokens and chat template."""
    h = hashlib.blake2b()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token,
                         getattr(tokenizer, "chat_template", None)]).encode())
    return _digest(h)


def settings_fingerprint(*settings) -> str:
    """Hash of JSON-able settings (dataclasses are turned into dicts), e.g. the prompt format and reduction."""
    plain = [dataclasses.asdict(s) if dataclasses.is_dataclass(s) else s for s in settings]
    return _digest(hashlib.blake2b(json.dumps(plain, sort_keys=True, default=str).encode()))


# -- the cache -----------------------------------------------------------------------------------------
class ScoreCacheError(RuntimeError):
    """The score cache's SQLite file cannot be used; the message names the file."""


class LMScoreCache:
    """LM log-likelihoods on disk (SQLite), keyed by (LM identity, prompt identity, x, d, y).

    ``lm_id`` should identify the weights (:func:`module_fingerprint`) and the tokenizer, ``prompt_id``
    everything else that changes the number (prompt format, target prefix, reduction, truncation): a
    different LM or prompt finds nothing of the other's (its entries stay, for when it comes back).
    Each :meth:`put` is committed, so an interrupted run keeps what it scored. Several processes may
    share one file (SQLite locks it). Any SQLite error (not a database, a folder, a full disk, a lock held
    too long) is a :class:`ScoreCacheError` naming the file.
    """

    def __init__(self, path: str | Path, lm_id: str, prompt_id: str):
        self.path = Path(path)
        self.namespace = settings_fingerprint(lm_id, prompt_id)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ScoreCacheError(f"LM score cache {self.path}: cannot create its folder ({err})") from None
        self.db = self._sql("open", lambda: sqlite3.connect(str(self.path), timeout=120, check_same_thread=False))
        self._sql("create the table", lambda: (self.db.execute(
            "CREATE TABLE IF NOT EXISTS scores (namespace TEXT NOT NULL, key TEXT NOT NULL, "
            "value REAL NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID"), self.db.commit()))
        self.hits = self.misses = 0

    def _sql(self, doing: str, run: Callable):
        try:
            return run()
        except sqlite3.Error as err:
            raise ScoreCacheError(f"LM score cache {self.path}: cannot {doing} ({type(err).__name__}: {err}); "
                                  "set model.init_args.scoring.cache to another file, or null to score without a "
                                  "cache") from None

    @staticmethod
    def key(x: str, d: str, y: str) -> str:
        return hashlib.blake2b(json.dumps([x, d, y]).encode(), digest_size=20).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):   # SQLite's limit on bound parameters
            part = keys[start:start + 500]
            query = f"SELECT key, value FROM scores WHERE namespace = ? AND key IN ({','.join('?' * len(part))})"
            args = [self.namespace, *part]
            out.update(self._sql("read", lambda: self.db.execute(query, args).fetchall()))  # noqa: B023
        return out

    def put(self, values: dict[str, float]) -> None:
        rows = [(self.namespace, k, float(v)) for k, v in values.items()]
        self._sql("write", lambda: (self.db.executemany(
            "INSERT OR REPLACE INTO scores (namespace, key, value) VALUES (?, ?, ?)", rows), self.db.commit()))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM scores WHERE namespace = ?", [self.namespace]).fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __getstate__(self):
        raise TypeError("LMScoreCache holds an open database connection; pass its path, not the object")


ScoreFn = Callable[[list[str], list[str], list[str]], torch.Tensor]


def lm_logliks(inputs: Sequence[str], documents: Sequence[Sequence[str]], targets: Sequence[str], score_fn: ScoreFn,
               cache: LMScoreCache | None = None) -> torch.Tensor:
    """(B, K) log P_LM(y_b | d_bk, x_b) for each query's K documents.

    ``score_fn(documents, inputs, targets) -> (N,)`` scores flat triples (e.g. ``generation.scoring.score_triples``
    bound to a model, tokenizer and prompt format). With a cache, only triples it does not hold are scored
    (each distinct triple once), and their scores are stored."""
    if not len(inputs) == len(documents) == len(targets):
        raise ValueError(f"lm_logliks: {len(inputs)} inputs, {len(documents)} document lists, {len(targets)} targets")
    k = {len(docs) for docs in documents}
    if len(k) != 1 or 0 in k:
        raise ValueError(f"lm_logliks: every query needs the same, non-zero number of documents, got {sorted(k)}")
    triples = [(x, d, y) for x, docs, y in zip(inputs, documents, targets) for d in docs]
    keys = [LMScoreCache.key(*t) for t in triples]
    known = cache.get(keys) if cache is not None else {}
    todo = {key: t for key, t in zip(keys, triples) if key not in known}
    if todo:
        xs, ds, ys = (list(c) for c in zip(*todo.values()))
        fresh = score_fn(ds, xs, ys).detach().float().cpu()
        if fresh.shape != (len(todo),):
            raise ValueError(f"lm_logliks: score_fn returned shape {tuple(fresh.shape)} for {len(todo)} triples")
        scored = dict(zip(todo, fresh.tolist()))
        if cache is not None:
            cache.put(scored)
        known = {**known, **scored}
    if cache is not None:
        cache.hits += len(keys) - len(todo)
        cache.misses += len(todo)
    return torch.tensor([known[key] for key in keys], dtype=torch.float32).view(len(inputs), -1)
