"""Every shipped RAG/query-enhancement config runs end to end through the CLI on tiny random models:
metrics logged, predictions written, example prompts/answers logged as TensorBoard text."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml

from train import cli_main

ROOT = Path(__file__).resolve().parent.parent
RAG_CONFIGS = sorted(p for p in glob.glob(str(ROOT / "configs/*_nq.yaml"))
                     if yaml.safe_load(open(p)).get("model", {}).get("class_path", "").endswith("RAGEvaluator"))
QE_CONFIGS = [str(ROOT / "configs/hyde_nq.yaml"), str(ROOT / "configs/lamer_nq.yaml")]


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory) -> Path:
    """A 30-passage slice of the NQ pool in both formats: the gold passages of the first 6 test questions
    plus 24 others, BEIR files (corpus, queries, qrels/test.tsv) and test.jsonl with the answers."""
    out = tmp_path_factory.mktemp("tiny_pool")
    pool = ROOT / "data/nq_pool"
    questions = [json.loads(line) for line in open(pool / "test.jsonl")][:6]
    corpus = [json.loads(line) for line in open(pool / "corpus.jsonl")]
    gold = {q["gold_id"] for q in questions}
    keep = [d for d in corpus if d["_id"] in gold] + [d for d in corpus if d["_id"] not in gold][:30 - len(gold)]
    (out / "qrels").mkdir()
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in keep))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q["id"], "text": q["question"]}) + "\n"
                                               for q in questions))
    (out / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                        "".join(f"{q['id']}\t{q['gold_id']}\t1\n" for q in questions))
    (out / "test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return out


def tensorboard_texts(log_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [t for t in acc.Tags().get("tensors", []) if "text_summary" in t]


def tiny_lm_and_encoder(lm_dir: str, encoder_dir: str) -> list[str]:
    return ["--model.init_args.lm.name_or_path", lm_dir, "--model.init_args.encoder.name_or_path", encoder_dir,
            "--model.init_args.encoder.query_max_length", "32", "--model.init_args.encoder.passage_max_length", "32"]


def test_rag_configs_cover_every_method():
    methods = {yaml.safe_load(open(p))["model"]["init_args"]["method"] for p in RAG_CONFIGS}
    assert methods == {"closed_book", "read", "replug", "recitation", "nli_filter"}


@pytest.mark.parametrize("config", RAG_CONFIGS, ids=lambda p: Path(p).stem)
def test_rag_config_runs_on_tiny_models(config, tiny_llama_dir, tiny_bert_dir, tiny_pool, tmp_path):
    cli = cli_main(["--config", config, *tiny_lm_and_encoder(tiny_llama_dir, tiny_bert_dir),
                    "--model.init_args.generation.max_new_tokens", "3", "--model.init_args.recitation_tokens", "3",
                    "--model.init_args.num_examples", "2", "--data.init_args.limit", "3",
                    "--data.init_args.batch_size", "2", "--data.init_args.corpus", str(tiny_pool),
                    "--data.init_args.test_file", str(tiny_pool / "test.jsonl"), "--trainer.logger.init_args.save_dir", str(tmp_path),
                    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    metrics = cli.trainer.callback_metrics
    assert {"test/em", "test/f1", "test/seconds"} <= set(metrics)
    assert 0.0 <= float(metrics["test/em"]) <= float(metrics["test/f1"]) + 1e-6 <= 1.0 + 1e-6
    method = cli.model.hparams.method
    if method not in ("closed_book", "recitation"):
        assert f"test/answer_recall@{cli.model.hparams.top_k}" in metrics
    log_dir = Path(cli.trainer.log_dir)
    records = [json.loads(line) for line in open(log_dir / "predictions.jsonl")]
    assert len(records) == 3 and all({"question", "prediction", "em", "f1", "prompt"} <= set(r) for r in records)
    if method == "nli_filter":
        for r in records:
            assert r["prediction"] == (r["rag_answers"] if r["entailed"] else r["closed_book_answers"])
    assert tensorboard_texts(log_dir), "no example prompts/answers logged as text"


@pytest.mark.parametrize("config", QE_CONFIGS, ids=lambda p: Path(p).stem)
def test_query_enhancement_config_runs_on_tiny_models(config, tiny_llama_dir, tiny_bert_dir, tiny_pool, tmp_path):
    cli = cli_main(["--config", config, *tiny_lm_and_encoder(tiny_llama_dir, tiny_bert_dir),
                    "--model.init_args.hyde.doc_tokens", "3", "--model.init_args.hyde.num_docs", "2",
                    "--model.init_args.lamer.draft_tokens", "3", "--model.init_args.gen_batch_size", "12",
                    "--model.init_args.answers_file", str(tiny_pool / "test.jsonl"),
                    "--data.init_args.data_dir", str(tiny_pool),
                    "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false"])
    metrics = cli.trainer.callback_metrics
    assert {"test/ndcg@10", "test/answer_recall@1", "test/answer_recall@20"} <= set(metrics)
    assert float(metrics["test/answer_recall@1"]) <= float(metrics["test/answer_recall@20"])
    assert tensorboard_texts(Path(cli.trainer.log_dir))


def test_hyde_needs_dense():
    from lightning_modules import QueryEnhancedRetriever

    with pytest.raises(ValueError, match="dense"):
        QueryEnhancedRetriever(method="hyde", retriever="bm25")


def test_merge_records_keeps_every_rank_once():
    from training.records import merge_records

    # DistributedSampler over 5 questions and 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and a repeat of 0
    parts = [[{"id": "q0"}, {"id": "q2"}, {"id": "q4"}], [{"id": "q1"}, {"id": "q3"}, {"id": "q0"}]]
    assert [r["id"] for r in merge_records(parts)] == ["q0", "q2", "q4", "q1", "q3"]


@pytest.mark.slow
def test_ddp_two_processes_write_the_predictions_of_both_ranks(tiny_llama_dir, tiny_pool, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from datamodules import QADataModule
    from lightning_modules import RAGEvaluator

    from generation.settings import Generation
    from training.settings import LM

    model = RAGEvaluator(method="closed_book", lm=LM(tiny_llama_dir), generation=Generation(max_new_tokens=2, batch_size=2))
    dm = QADataModule(test_file=str(tiny_pool / "test.jsonl"), corpus=None, limit=5, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=CSVLogger(tmp_path, name="ddp"),
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, dm)
    files = list(tmp_path.rglob("predictions.jsonl"))  # the spawned rank 0 wrote it; one file for both ranks
    assert len(files) == 1
    records = [json.loads(line) for line in open(files[0])]
    expected = [json.loads(line)["id"] for line in open(tiny_pool / "test.jsonl")][:5]
    assert sorted(r["id"] for r in records) == sorted(expected)


@pytest.mark.parametrize("config", RAG_CONFIGS + QE_CONFIGS + [str(ROOT / "configs/hyde_scifact.yaml"),
                                                               str(ROOT / "configs/lamer_scifact.yaml")],
                         ids=lambda p: Path(p).stem)
def test_inference_configs_state_only_what_differs_from_their_family_base(config, capsys):
    """Each file includes a family base (configs/families/) and refines it; the resolved config keeps the
    base's trainer basics and data, and names its own log directory."""
    own = yaml.safe_load(open(config))
    assert own["config"].startswith("families/") and "seed_everything" not in own and "trainer" not in own
    base = yaml.safe_load(open(ROOT / "configs" / own["config"]))
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", config, "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["seed_everything"] == base["seed_everything"]
    for key in ("accelerator", "devices", "precision"):
        assert resolved["trainer"][key] == base["trainer"][key]
    assert resolved["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    assert resolved["trainer"]["logger"]["init_args"]["name"] == Path(config).stem
    for key, value in base["model"]["init_args"].items():
        if key not in own.get("model", {}).get("init_args", {}):
            got = resolved["model"]["init_args"][key]
            if isinstance(value, dict):  # a settings group: the base's fields, the others at their defaults
                got = {k: got[k] for k in value}
            assert got == value, key
    for key, value in base["data"]["init_args"].items():
        if f"data.init_args.{key}" not in own:
            assert resolved["data"]["init_args"][key] == value, key
