"""IndexRefresh: re-encodes the corpus during training, swaps the index in, and re-mines hard negatives
from the current model (ANCE); the on-disk store path and the in-memory path agree."""

import lightning as L
import pytest
import torch

from callbacks import IndexRefresh
from datamodules import BEIRDataModule
from lightning_modules import ContrastiveRetriever
from retrieval.bm25 import mine_hard_negatives
from retrieval.index import DenseIndex


class Recorder(ContrastiveRetriever):
    def on_index_refresh(self, index):
        self.refreshed_at = [*getattr(self, "refreshed_at", []), self.trainer.global_step]


@pytest.mark.parametrize("on_disk", [True, False])
def test_refresh_swaps_index_and_remines_negatives(tiny_bert_dir, tiny_beir_dir, tmp_path, on_disk):
    L.seed_everything(0)
    model = Recorder(tiny_bert_dir, passage_max_length=24, warmup=0,
                     optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    dm = BEIRDataModule(str(tiny_beir_dir), num_negatives=1, negatives_depth=5, batch_size=3)
    refresh = IndexRefresh(every_n_steps=1, refresh_on_train_start=True, remine_negatives=True, negatives_depth=5,
                           store_dir=str(tmp_path / "store") if on_disk else None, shard_size=5, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, callbacks=[refresh],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    bm25_windows = None

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal bm25_windows
            bm25_windows = {q: list(w) for q, w in dm.train_dataset.negatives.items()}

    trainer.callbacks.insert(0, Snapshot())
    trainer.fit(model, dm)
    assert model.refreshed_at == [0, 1, 2] and refresh.num_refreshes == 3
    index = model.retrieval_index
    assert isinstance(index, DenseIndex) and sorted(index.doc_ids) == sorted(dm.doc_ids)
    if on_disk:
        assert [p.name for p in (tmp_path / "store").iterdir()] == ["step_00000002"]   # older stores removed
    # the windows are what the final model's dense ranking gives (the model did not change after the last refresh)
    ds = dm.train_dataset
    corpus = model.encode_passages([dm.passages[d] for d in dm.doc_ids])
    exact = DenseIndex(corpus.shape[1]).add(dm.doc_ids, corpus)
    ranking = exact.search(model.encode_queries([ds.queries[q] for q in ds.query_ids]), 5)
    expected = mine_hard_negatives(ranking, [set(ds.positives[q]) for q in ds.query_ids], 5, 5)
    assert {q: ds.negatives[q] for q in ds.query_ids} == dict(zip(ds.query_ids, expected))
    assert all(len(w) in (4, 5) and not set(w) & set(ds.positives[q]) for q, w in ds.negatives.items())
    assert bm25_windows is not None and bm25_windows != ds.negatives


def test_refresh_needs_a_schedule():
    with pytest.raises(ValueError, match="every_n_steps"):
        IndexRefresh()
