"""Index refresh: re-encode the corpus with the current model every N steps (or epochs) during training
and swap the new faiss index in, so methods that retrieve while training see a fresh index: ANCE-style
hard-negative re-mining now, REPLUG LSR's retrieval later (the original refreshes every T steps).

The callback needs from the LightningModule ``encode_passages(texts) -> (N, H)`` (and, for re-mining,
``encode_queries(texts)``), and from the DataModule ``doc_ids`` and ``passages`` ({doc_id: text}): the
BEIR and QA DataModules both have them. After each refresh it sets ``pl_module.retrieval_index`` (a
:class:`retrieval.index.DenseIndex`) and calls ``pl_module.on_index_refresh(index)`` if the module
defines it. A :class:`retrieval.search.DenseRetriever` built with ``index=lambda: module.retrieval_index``
reads the new index at its next search, so every user of that retriever (RAG inference, HyDE, LameR,
the RL search tool) sees the refresh.

With several processes each rank encodes a share of the corpus (its shards of the on-disk store, or a
slice in memory) and every rank builds the same index from all of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from retrieval.bm25 import mine_hard_negatives
from training.distributed import gather_objects
from retrieval.embeddings_store import EmbeddingsStore, write_embeddings
from retrieval.index import DenseIndex


class IndexRefresh(L.Callback):
    """Args:
        every_n_steps / every_n_epochs: refresh after every N optimizer steps, or at the end of every N
            epochs (give one or both).
        refresh_on_train_start: also build an index from the initial model before the first step.
        factory / parameters: the faiss index (any ``index_factory`` string) and its search parameters.
        store_dir: write the corpus embeddings to a sharded memory-mapped store under this directory
            (one sub-directory per refresh, the previous one deleted), for corpora larger than RAM; if
            None they are held in memory.
        shard_size / batch_size: rows per store shard, texts per encoding batch.
        remine_negatives: replace the training queries' hard-negative windows (a ContrastivePairs
            dataset: ``query_ids``, ``queries``, ``positives``, ``negatives``) with the top of the fresh
            dense ranking, judged positives removed (ANCE).
        negatives_depth / negatives_skip_top: the ranks [skip_top, depth) that form each window.
    """

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = None,
                 refresh_on_train_start: bool = False, factory: str = "Flat", parameters: str | None = None,
                 store_dir: str | None = None, shard_size: int = 50_000, batch_size: int = 64,
                 remine_negatives: bool = False, negatives_depth: int = 30, negatives_skip_top: int = 0):
        if not every_n_steps and not every_n_epochs and not refresh_on_train_start:
            raise ValueError("IndexRefresh: set every_n_steps, every_n_epochs or refresh_on_train_start")
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.refresh_on_train_start = refresh_on_train_start
        self.factory, self.parameters, self.store_dir = factory, parameters, store_dir
        self.shard_size, self.batch_size = shard_size, batch_size
        self.remine_negatives, self.negatives_depth, self.negatives_skip_top = (
            remine_negatives, negatives_depth, negatives_skip_top)
        self.index: DenseIndex | None = None
        self.num_refreshes = 0
        self._last_step = -1
        self._store_path: Path | None = None

    # -- when ------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        if self.remine_negatives and trainer.datamodule.hparams.get("num_workers", 0) > 0:
            rank_zero_warn("IndexRefresh(remine_negatives=True) with DataLoader workers: workers hold copies of the "
                           "dataset, so re-mined negatives reach them only when the loader is re-created")
        if self.refresh_on_train_start:
            self.refresh(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.refresh(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 \
                and trainer.global_step != self._last_step:
            self.refresh(trainer, pl_module)

    # -- what ------------------------------------------------------------------------------------
    def refresh(self, trainer, pl_module) -> DenseIndex:
        """1. encode the corpus (this rank's share) 2. build the index from every rank's share
        3. swap it in 4. re-mine hard negatives."""
        dm = trainer.datamodule
        doc_ids = list(dm.doc_ids)
        texts = [dm.passages[d] for d in doc_ids]
        rank, world = trainer.global_rank, trainer.world_size
        encode = lambda batch: pl_module.encode_passages(batch, self.batch_size)  # noqa: E731
        if self.store_dir is not None:                                              # 1.-2. on disk
            path = Path(self.store_dir) / f"step_{trainer.global_step:08d}"
            dim = encode(texts[:1]).shape[1]
            write_embeddings(path, doc_ids, texts, encode, dim, self.shard_size, self.batch_size,
                             rank=rank, world_size=world)
            trainer.strategy.barrier("index_refresh")
            index = DenseIndex.from_store(EmbeddingsStore.open(path), self.factory, parameters=self.parameters)
            trainer.strategy.barrier("index_refresh_built")
            if rank == 0 and self._store_path is not None and self._store_path != path:
                shutil.rmtree(self._store_path, ignore_errors=True)
            self._store_path = path
        else:                                                                       # 1.-2. in memory
            mine = slice(rank, None, world)
            parts = gather_objects((doc_ids[mine], encode(texts[mine]).numpy()))
            index = DenseIndex(parts[0][1].shape[1], self.factory, parameters=self.parameters)
            index.add([d for ids, _ in parts for d in ids], np.concatenate([e for _, e in parts]))
        self.index = pl_module.retrieval_index = index                              # 3.
        if hasattr(pl_module, "on_index_refresh"):
            pl_module.on_index_refresh(index)
        if self.remine_negatives:                                                   # 4.
            self._remine(trainer, pl_module, index)
        self.num_refreshes += 1
        self._last_step = trainer.global_step
        rank_zero_info(f"IndexRefresh: index of {len(index)} passages rebuilt at step {trainer.global_step}")
        return index

    def _remine(self, trainer, pl_module, index: DenseIndex) -> None:
        dataset = getattr(trainer.datamodule, "train_dataset", None)
        if dataset is None or not hasattr(dataset, "negatives"):
            raise ValueError("IndexRefresh(remine_negatives=True): the datamodule's train_dataset has no hard-negative "
                             "windows (a ContrastivePairs dataset with query_ids, queries, positives, negatives)")
        rank, world = trainer.global_rank, trainer.world_size
        qids = dataset.query_ids[rank::world]
        ranking = index.search(pl_module.encode_queries([dataset.queries[q] for q in qids], self.batch_size),
                               self.negatives_depth)
        mined = mine_hard_negatives(ranking, [set(dataset.positives[q]) for q in qids], self.negatives_depth,
                                    self.negatives_depth, self.negatives_skip_top)
        for part in gather_objects(dict(zip(qids, mined))):
            dataset.negatives.update(part)
