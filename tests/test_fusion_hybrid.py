"""HybridRetriever through the CLI: its ranking is the RRF / weighted fusion of its own BM25 and dense runs,
and a PageRank prior from a link graph is mixed in."""

import json
from pathlib import Path

import pytest

from retrieval.bm25 import BM25
from retrieval.fusion import mix_prior, reciprocal_rank_fusion, weighted_fusion
from retrieval.index import DenseIndex
from retrieval.pagerank import pagerank
from retrieval.settings import EncoderSettings, FusionSettings, PriorSettings
from train import cli_main


def _args(tiny_bert_dir, tiny_beir_dir, tmp_path, *extra):
    return ["--config", "configs/hybrid_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--model.init_args.encoder.passage_max_length", "24", "--model.init_args.fusion.depth", "5",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.eval_batch_size", "5",
            "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", *extra]


def test_hybrid_rrf_and_weighted_with_pagerank(tiny_bert_dir, tiny_beir_dir, tmp_path):
    links = tmp_path / "links.tsv"
    links.write_text("d1\td0\nd2\td0\nd3\td0\nd0\td6\n")
    cli = cli_main(_args(tiny_bert_dir, tiny_beir_dir, tmp_path))
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert metrics["num_queries"] == 4 and 0 < metrics["ndcg@10"] <= 1

    model, dm = cli.model, cli.datamodule
    ids = dm.doc_ids
    texts = [dm.passages[d] for d in ids]
    qids = sorted(dm.eval_qrels("test"))
    qtexts = [dm.data.queries[q] for q in qids]
    corpus = {"ids": ids, "texts": texts, "embeddings": model.encoder.encode(texts, max_length=24, show_progress=False)}
    queries = {"ids": qids, "texts": qtexts, "embeddings": model.encoder.encode(qtexts, max_length=64, show_progress=False)}
    sparse = {q: dict(h) for q, h in zip(qids, BM25(ids, texts).search(qtexts, 5))}
    index = DenseIndex(32).add(ids, corpus["embeddings"])
    dense = {q: dict(h) for q, h in zip(qids, index.search(queries["embeddings"], 5))}
    assert model.rank(corpus, queries, 10) == reciprocal_rank_fusion([sparse, dense], 60)

    model.fusion = FusionSettings(method="weighted", weights=[0.3, 0.7], depth=5)
    model.prior = PriorSettings(link_graph=str(links), weight=0.2)
    fused = weighted_fusion([sparse, dense], [0.3, 0.7])
    expected = mix_prior(fused, pagerank([("d1", "d0"), ("d2", "d0"), ("d3", "d0"), ("d0", "d6")], nodes=ids), 0.2,
                         log_prior=True)
    got = model.rank(corpus, queries, 10)
    assert got.keys() == expected.keys()
    for q in got:
        assert got[q] == pytest.approx(expected[q])


def test_hybrid_rejects_bad_fusion(tiny_bert_dir):
    from lightning_modules import HybridRetriever

    with pytest.raises(ValueError, match="unknown fusion"):
        HybridRetriever(EncoderSettings(tiny_bert_dir), fusion=FusionSettings(method="max"))
    with pytest.raises(ValueError, match=r"expected \[bm25, dense\]"):
        HybridRetriever(EncoderSettings(tiny_bert_dir), fusion=FusionSettings(weights=[1.0]))


def test_bm25_retriever_ranks_with_the_configured_parameters(tiny_beir_dir, tmp_path):
    """BM25Retriever through the CLI with one field of its ``bm25`` group overridden (the others kept)."""
    cli = cli_main(["--config", "configs/bm25_scifact.yaml", "--model.init_args.bm25.k1", "1.2",
                    "--data.init_args.data_dir", str(tiny_beir_dir), "--trainer.logger.init_args.save_dir",
                    str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert metrics["num_queries"] == 4 and 0 < metrics["ndcg@10"] <= 1
    model, dm = cli.model, cli.datamodule
    assert (model.bm25.k1, model.bm25.b, model.bm25.stemmer) == (1.2, 0.4, "english")
    ids, qids = dm.doc_ids, sorted(dm.eval_qrels("test"))
    texts, qtexts = [dm.passages[d] for d in ids], [dm.data.queries[q] for q in qids]
    expected = {q: dict(h) for q, h in zip(qids, BM25(ids, texts, k1=1.2, b=0.4).search(qtexts, 10))}
    assert model.rank({"ids": ids, "texts": texts}, {"ids": qids, "texts": qtexts}, 10) == expected
    assert expected != {q: dict(h) for q, h in zip(qids, BM25(ids, texts).search(qtexts, 10))}   # k1 matters here
