"""Corpus embeddings on disk, in shards of memory-mapped ``.npy`` files, so a corpus larger than RAM can be
encoded (one shard in memory at a time), indexed shard by shard, and resumed after an interruption.

Layout of a store directory::

    meta.json                {"dim", "dtype", "shard_size", "num_docs", "num_shards", "fingerprint"}
    shard_00000.npy          (n_s, dim) array, opened with numpy memory mapping
    shard_00000.ids.json     the doc ids of its rows; written last, so its presence marks the shard complete

Writing skips shards that are already complete, so an interrupted run resumes where it stopped. Shards
can be split between processes: rank r writes shards r, r + W, r + 2W, ... (``rank``/``world_size``).
A store is tied to its corpus by a fingerprint of the doc ids: resuming with another corpus is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

META = "meta.json"


def _fingerprint(doc_ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in doc_ids:
        h.update(d.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _shard_paths(root: Path, i: int) -> tuple[Path, Path]:
    return root / f"shard_{i:05d}.npy", root / f"shard_{i:05d}.ids.json"


def write_embeddings(root: str | Path, doc_ids: Sequence[str], texts: Sequence[str],
                     encode: Callable[[list[str]], torch.Tensor | np.ndarray], dim: int, shard_size: int = 50_000,
                     batch_size: int = 256, dtype: str = "float32", rank: int = 0, world_size: int = 1,
                     progress: Callable[[int, int], None] | None = None) -> "EmbeddingsStore | None":
    """Encode ``texts`` in shards of ``shard_size`` rows into ``root``; completed shards are skipped.

    ``encode`` maps a list of texts to (n, dim) embeddings. ``texts`` may be any lazily indexable
    sequence. Returns the store when every shard is complete (with several ranks, after the last
    rank finishes; call :meth:`EmbeddingsStore.open` after a barrier)."""
    if len(doc_ids) != len(texts):
        raise ValueError(f"write_embeddings: {len(doc_ids)} ids but {len(texts)} texts")
    if not doc_ids:
        raise ValueError("write_embeddings: empty corpus")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    num_shards = (len(doc_ids) + shard_size - 1) // shard_size
    meta = {"dim": dim, "dtype": dtype, "shard_size": shard_size, "num_docs": len(doc_ids),
            "num_shards": num_shards, "fingerprint": _fingerprint(doc_ids)}
    if (root / META).exists():
        old = json.loads((root / META).read_text())
        if old != meta:
            raise ValueError(f"{root / META}: the store was written for another corpus or settings ({old}); "
                             f"this call has {meta}. Use a new directory or delete it.")
    else:   # every rank may write it (same content, atomic rename): no rank waits for another
        tmp = root / f"{META}.{rank}.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, root / META)
    for s in range(rank, num_shards, world_size):
        array_path, ids_path = _shard_paths(root, s)
        ids = list(doc_ids[s * shard_size:(s + 1) * shard_size])
        if ids_path.exists():
            if json.loads(ids_path.read_text()) != ids:
                raise ValueError(f"{ids_path}: doc ids differ from the corpus being encoded")
            continue
        array = np.lib.format.open_memmap(array_path, mode="w+", dtype=dtype, shape=(len(ids), dim))
        start = s * shard_size
        for b in range(0, len(ids), batch_size):
            emb = encode([texts[start + b + j] for j in range(min(batch_size, len(ids) - b))])
            emb = emb.detach().float().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
            if emb.shape != (min(batch_size, len(ids) - b), dim):
                raise ValueError(f"write_embeddings: encode returned shape {emb.shape}, expected "
                                 f"({min(batch_size, len(ids) - b)}, {dim})")
            array[b:b + len(emb)] = emb
            if progress:
                progress(start + b + len(emb), len(doc_ids))
        array.flush()
        del array
        tmp = ids_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ids))
        os.replace(tmp, ids_path)       # the shard counts as complete only now
    store = EmbeddingsStore(root)
    return store if store.complete else None


class EmbeddingsStore:
    """Read access to a store written by :func:`write_embeddings`; arrays are memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / META).is_file():
            raise FileNotFoundError(f"{self.root / META}: not an embeddings store (run write_embeddings first)")
        self.meta = json.loads((self.root / META).read_text())
        self.dim = self.meta["dim"]

    @classmethod
    def open(cls, root: str | Path) -> "EmbeddingsStore":
        store = cls(root)
        if not store.complete:
            missing = [s for s in range(store.meta["num_shards"]) if not _shard_paths(store.root, s)[1].exists()]
            raise ValueError(f"{store.root}: incomplete store, shards {missing[:10]} missing; run write_embeddings again to resume")
        return store

    @property
    def complete(self) -> bool:
        return all(_shard_paths(self.root, s)[1].exists() for s in range(self.meta["num_shards"]))

    def __len__(self) -> int:
        return self.meta["num_docs"]

    def shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(doc ids, memory-mapped (n, dim) array) per shard, in corpus order."""
        for s in range(self.meta["num_shards"]):
            array_path, ids_path = _shard_paths(self.root, s)
            yield json.loads(ids_path.read_text()), np.load(array_path, mmap_mode="r")

    @property
    def doc_ids(self) -> list[str]:
        return [d for ids, _ in self.shards() for d in ids]

    def load(self) -> tuple[list[str], np.ndarray]:
        """Everything in memory (only for corpora that fit)."""
        ids, arrays = zip(*self.shards())
        return [d for i in ids for d in i], np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays])

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` distinct rows drawn uniformly (e.g. to train an IVF/PQ index), read shard by shard."""
        n = min(n, len(self))
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        size, out = self.meta["shard_size"], []
        for s, (_, array) in enumerate(self.shards()):
            local = rows[(rows >= s * size) & (rows < (s + 1) * size)] - s * size
            out.append(np.asarray(array[local], dtype=np.float32))
        return np.concatenate(out)
