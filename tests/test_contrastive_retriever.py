"""ContrastiveRetriever (DPR): a one-batch fit and test through the real CLI with a tiny random BERT,
the evaluator's outputs, and the export round trip."""

import json
from pathlib import Path

import pytest
import torch

from train import cli_main


@pytest.fixture
def dpr_args(tiny_bert_dir, tiny_beir_dir, tmp_path):
    return ["--config", "configs/dpr_scifact.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.encoder.eval_passage_max_length", "32",
            # fp32 on every CPU: the export is compared with sentence-transformers' fp32 encoding to 1e-5
            "--model.init_args.encoder.precision", "fp32",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
            "--data.init_args.num_negatives", "1", "--data.init_args.eval_batch_size", "5",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"]


def test_fit_test_and_export(dpr_args, tiny_beir_dir):
    cli = cli_main(dpr_args)
    log_dir = Path(cli.trainer.log_dir)
    assert cli.trainer.global_step == 1
    metrics = json.loads((log_dir / "test_metrics.json").read_text())
    assert metrics["num_queries"] == 4 and 0 <= metrics["ndcg@10"] <= 1
    # Recall@100 over a 12-document corpus must be 1: every test query is answered with every document.
    assert metrics["recall@100"] == pytest.approx(1.0)
    run_lines = (log_dir / "test_run.trec").read_text().splitlines()
    assert len(run_lines) == 4 * 12 and run_lines[0].split()[1] == "Q0"
    assert cli.trainer.callback_metrics["test/ndcg@10"].item() == pytest.approx(metrics["ndcg@10"], rel=1e-5)
    tb = list(log_dir.glob("events.out.tfevents.*"))
    assert tb, "TensorBoard event file missing"

    # Export: transformers and sentence-transformers load it and agree with the trained module.
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from retrieval.encoders import pool

    export = log_dir / "export"
    texts = ["a short query", "a somewhat longer passage about topic 3 and word3"]
    ours = cli.model.passage_encoder.encode(texts, show_progress=False)
    st = torch.tensor(SentenceTransformer(str(export), device="cpu").encode(texts))
    tok, hf = AutoTokenizer.from_pretrained(export), AutoModel.from_pretrained(export)
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        raw = pool(hf(**batch).last_hidden_state, batch["attention_mask"], "mean")
    assert torch.allclose(ours, st, atol=1e-5)
    assert torch.allclose(ours, torch.nn.functional.normalize(raw, dim=-1), atol=1e-5)
    assert json.loads((export / "ragkit_encoder.json").read_text())["pooling"] == "mean"


def test_training_changes_weights_and_loss_is_finite(dpr_args):
    cli = cli_main(["fit", *dpr_args, "--trainer.limit_train_batches", "2",
                    "--model.init_args.optimizer.init_args.lr", "1e-3", "--model.init_args.warmup", "0"])
    logged = cli.trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and 0 <= logged["train/in_batch_accuracy"] <= 1
    from transformers import AutoModel

    start = AutoModel.from_pretrained(cli.model.settings.name_or_path).state_dict()
    trained = cli.model.passage_encoder.model.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)


def test_separate_encoders_and_cls_pooling(dpr_args):
    cli = cli_main([*dpr_args, "--model.init_args.shared_encoder", "false", "--model.init_args.encoder.pooling", "cls",
                    "--model.init_args.similarity", "dot"])
    export = Path(cli.trainer.log_dir) / "export"
    assert (export / "query" / "modules.json").exists() and (export / "passage" / "modules.json").exists()
    assert cli.model.query_encoder is not cli.model.passage_encoder


def test_false_negative_mask_in_batch(tiny_beir_dir):
    from datamodules.beir import BEIRDataModule

    dm = BEIRDataModule(data_dir=str(tiny_beir_dir), num_negatives=2, batch_size=3)
    dm.setup("fit")
    ds = dm._build_train_dataset()
    items = [ds[0], ds[1]]
    items[1]["all_positives"] = {items[1]["positive_id"], items[0]["positive_id"]}  # q1 also judges q0's doc
    batch = ds.collate(items)
    assert batch["passages"][:2] == [dm.passages[items[0]["positive_id"]], dm.passages[items[1]["positive_id"]]]
    ids = batch["passage_ids"]
    assert ids[:2] == [items[0]["positive_id"], items[1]["positive_id"]] and len(ids) == 2 + 2 + 2
    # exclude[i, j]: passage j is one of query i's positives but not its target (j != i)
    expected = [[j != i and ids[j] in items[i]["all_positives"] for j in range(len(ids))] for i in range(2)]
    assert batch["exclude"].tolist() == expected
    assert batch["exclude"][1, 0] and not batch["exclude"][1, 1] and not batch["exclude"][0, 0]
    assert not set(items[0]["negative_ids"]) & items[0]["all_positives"]


def test_validation_on_held_out_dev_queries_and_best_checkpoint(dpr_args):
    cli = cli_main(["fit", *dpr_args, "--trainer.limit_val_batches", "1.0", "--data.init_args.dev_fraction", "0.34",
                    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1.0",
                    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                    "--trainer.callbacks.monitor=val/ndcg@10", "--trainer.callbacks.mode=max"])
    dm = cli.datamodule
    assert len(dm.qrels["val"]) == 2 and len(dm.train_qrels) == 4 and not set(dm.qrels["val"]) & set(dm.train_qrels)
    assert 0 <= cli.trainer.callback_metrics["val/ndcg@10"].item() <= 1
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/ndcg@10" and checkpoint.best_model_score is not None


def test_seeded_runs_are_identical_and_accumulation_counts_steps(dpr_args):
    def trained(*extra):
        cli = cli_main(["fit", *dpr_args, "--trainer.limit_train_batches", "2", *extra])
        return cli, cli.model.passage_encoder.model.state_dict()

    cli_a, a = trained()
    _, b = trained()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cli_c, c = trained("--seed_everything", "43")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    cli_d, _ = trained("--trainer.accumulate_grad_batches", "2")
    assert cli_a.trainer.global_step == 2 and cli_d.trainer.global_step == 1


def test_encoder_dropout_switch(tiny_bert_dir):
    from retrieval.encoders import Encoder

    quiet, noisy = Encoder(tiny_bert_dir), Encoder(tiny_bert_dir, dropout=True)
    assert quiet.training and not quiet.model.training          # measured demo setting: no dropout
    assert noisy.training and noisy.model.training
    assert not noisy.eval().model.training and noisy.train().model.training
