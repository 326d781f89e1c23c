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
from retrieval.settings import EncoderSettings


class Recorder(ContrastiveRetriever):
    def on_index_refresh(self, index):
        self.refreshed_at = [*getattr(self, "refreshed_at", []), self.trainer.global_step]


@pytest.mark.parametrize("on_disk", [True, False])
def test_refresh_swaps_index_and_remines_negatives(tiny_bert_dir, tiny_beir_dir, tmp_path, on_disk):
    L.seed_everything(0)
    model = Recorder(EncoderSettings(tiny_bert_dir, passage_max_length=24), warmup=0,
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


class QARetriever(L.LightningModule):
    """A dense retriever trained on QA data (questions against their gold passages), as REPLUG LSR will
    be: every user of its search layer must see the index IndexRefresh swaps in."""

    def __init__(self, encoder_dir: str, generator_dir: str):
        super().__init__()
        from retrieval.encoders import Encoder

        self.encoder = Encoder(encoder_dir, normalize=True, max_length=24)
        self.generator_dir = generator_dir
        self.retrieval_index = None
        self.checks: list[dict] = []

    def setup(self, stage):
        from training.models import load_causal_lm
        from generation.rag import TextGenerator
        from retrieval.search import DenseRetriever

        dm = self.trainer.datamodule
        # one retriever, read by every user below; the index is looked up at each call
        self.retriever = DenseRetriever(dm.corpus, self.encoder, index=lambda: self.retrieval_index,
                                        encode_queries=self.encode_queries)
        lm, tok = load_causal_lm(self.generator_dir, device="cpu")
        self.generate = TextGenerator(lm.eval(), tok, max_new_tokens=2)

    def encode_passages(self, texts, batch_size=64):
        return self.encoder.encode(texts, batch_size, show_progress=False)

    encode_queries = encode_passages

    def training_step(self, batch, batch_idx):
        from retrieval.losses import contrastive_loss

        dm = self.trainer.datamodule
        q = self.encoder(**self.encoder.tokenize(batch["questions"]))
        p = self.encoder(**self.encoder.tokenize([dm.passages[d] for d in batch["gold_ids"]]))
        return contrastive_loss(q @ p.T, torch.arange(len(q)), temperature=0.05)

    def on_train_batch_start(self, batch, batch_idx):
        from retrieval.query_enhancement import hyde_search, hyde_vectors, lamer_search
        from rl.search import SafeSearch, format_information

        dm, qs = self.trainer.datamodule, batch["questions"]
        # what the index built from the current weights returns (IndexRefresh ran after the last step)
        fresh = DenseIndex(self.encoder.dim).add(dm.doc_ids, self.encode_passages([dm.passages[d] for d in dm.doc_ids]))
        expected = fresh.search(self.encode_queries(qs), 3)
        hits = self.retriever.retrieve(qs, 3)                                            # RAG inference
        info = SafeSearch(self.retriever, k=3).information(qs)                           # the RL search tool
        lamer, augmented = lamer_search(self.retriever, self.generate, qs, 3, num_candidates=2)   # LameR
        hyde, docs = hyde_search(self.retriever, self.generate, qs, 3, num_docs=1)       # HyDE
        self.checks.append({
            "index": self.retrieval_index,
            "rag": [[(p.id, p.score) for p in row] for row in hits] == [
                [(d, pytest.approx(s, abs=1e-5)) for d, s in row] for row in expected],
            "rl": info == [format_information(row) for row in self.retriever.retrieve(qs, 3)]
            and [[p.id for p in row] for row in hits] == [[d for d, _ in row] for row in expected],
            "lamer": [[d for d, _ in r] for r in lamer] == [[d for d, _ in r] for r in
                                                             fresh.search(self.encode_queries(augmented), 3)],
            "hyde": [[d for d, _ in r] for r in hyde] == [[d for d, _ in r] for r in fresh.search(
                hyde_vectors(self.encode_passages, qs, docs), 3)],
            "scores": [s for row in expected for _, s in row],
        })

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_refresh_on_qa_data_is_seen_by_every_user_of_the_search_layer(tiny_bert_dir, tiny_llama_dir, tmp_path):
    import json

    from datamodules import QADataModule

    corpus = [{"_id": f"p{i}", "title": f"t{i}", "text": f"passage {i} about subject {i % 3} and item{i}"}
              for i in range(8)]
    questions = [{"id": f"q{i}", "question": f"what about subject {i % 3} item{i}", "answers": [f"item{i}"],
                  "gold_id": f"p{i}"} for i in range(6)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    L.seed_everything(0)
    dm = QADataModule(test_file=None, train_file=str(tmp_path / "train.jsonl"), corpus=str(tmp_path), batch_size=3)
    model = QARetriever(tiny_bert_dir, tiny_llama_dir)
    refresh = IndexRefresh(every_n_steps=1, refresh_on_train_start=True, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, callbacks=[refresh],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, dm)
    assert dm.doc_ids == [f"p{i}" for i in range(8)] and refresh.num_refreshes == 4
    assert len(model.checks) == 3
    for check in model.checks:
        assert check["rag"] and check["rl"] and check["lamer"] and check["hyde"], check
    # each step searched a new index, and training moved the scores (so a stale index would have been caught)
    assert len({id(c["index"]) for c in model.checks}) == 3
    assert model.checks[0]["scores"] != pytest.approx(model.checks[-1]["scores"], abs=1e-3)
