"""Errors a user can act on, through the real entry point (in-process): the useful line is the last thing
printed and short; nothing wrong is done silently. See docs/bad_inputs.md for the table."""

import json
from pathlib import Path

import pytest

import train
from train import cli_main, main, short_error

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dpr_args(tiny_bert_dir, tiny_beir_dir, tmp_path):
    return ["--config", "configs/dpr_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.encoder.eval_passage_max_length", "32",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
            "--data.init_args.num_negatives", "0", "--data.init_args.eval_batch_size", "6",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def last_lines(capsys, n=2) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-n:]


def test_batch_larger_than_training_set_stops_before_anything_is_exported(dpr_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*dpr_args, "--data.init_args.batch_size", "32"])
    assert exit_.value.code == 1
    last = last_lines(capsys, 1)[0]
    assert last.startswith("error: ValueError: data.batch_size 32 is larger than the 6 training queries")
    assert "batch_size 6 or less" in last
    assert not list((tmp_path / "runs").rglob("export")) and not list((tmp_path / "runs").rglob("test_metrics.json"))


def test_a_fit_without_training_steps_is_not_tested_or_exported(dpr_args, tmp_path, monkeypatch):
    # Whatever the DataModule: a loader that yields nothing must not lead to an untrained "trained model".
    from torch.utils.data import DataLoader

    from datamodules.beir import BEIRDataModule

    monkeypatch.setattr(BEIRDataModule, "train_dataloader", lambda self: DataLoader([]))
    with pytest.raises(RuntimeError, match="no training step ran.*nothing was tested or exported"):
        cli_main(dpr_args)
    assert not list((tmp_path / "runs").rglob("export")) and not list((tmp_path / "runs").rglob("test_metrics.json"))


def test_training_run_logs_lr_and_progress_lines(dpr_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGKIT_PROGRESS_EVERY", "0")
    cli = cli_main(dpr_args)
    err = capsys.readouterr().err
    # stderr is captured (not a terminal): progress lines with rate and ETA for training and the test loops
    assert "train: 2/2 (100%)" in err and "step/s, ETA" in err and "train/loss" in err
    assert "test dataloader 0: 2/2 (100%)" in err and "test dataloader 1: 1/1 (100%)" in err  # 12 docs, 4 queries
    assert "💡" not in err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in Path(cli.trainer.log_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert any(t.startswith("lr-AdamW") for t in tags), tags


def test_test_only_run_needs_no_training_qrels_and_reads_headerless_qrels_on_request(dpr_args, tiny_beir_dir,
                                                                                      capsys):
    (tiny_beir_dir / "qrels" / "train.tsv").unlink()
    test = tiny_beir_dir / "qrels" / "test.tsv"
    test.write_text("".join(test.read_text().splitlines(keepends=True)[1:]))  # drop the header line
    with pytest.raises(SystemExit):
        main(["test", *dpr_args])
    last = last_lines(capsys, 1)[0]
    assert "test.tsv, line 1: expected the header" in last and "--data.init_args.qrels_header false" in last
    cli = cli_main(["test", *dpr_args, "--data.init_args.qrels_header", "false"])
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert metrics["num_queries"] == 4


@pytest.mark.parametrize("path, config", [("/nope/model", "dpr_scifact"), ("./nope", "dpr_scifact"),
                                          ("../nope/x", "dpr_scifact"), ("~/nope", "dpr_scifact"),
                                          # loads its encoder in __init__: jsonargparse wraps the error there
                                          ("/nope/model", "hybrid_scifact")])
def test_missing_model_path_is_one_short_last_line_without_download_advice(dpr_args, tiny_beir_dir, capsys, path,
                                                                          config):
    args = dpr_args if config == "dpr_scifact" else [
        "test", "--config", f"configs/{config}.yaml", "--data.init_args.data_dir", str(tiny_beir_dir)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--model.init_args.encoder.name_or_path", path])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: FileNotFoundError: model folder not found: {path}") and len(last) < 200
    assert "hf download" not in err and "Namespace(" not in err and "Traceback" not in err


def test_malformed_corpus_is_one_short_last_line(dpr_args, tiny_beir_dir, capsys):
    corpus = tiny_beir_dir / "corpus.jsonl"
    corpus.write_bytes(corpus.read_bytes().replace(b"title 5", b"title \xff5"))
    with pytest.raises(SystemExit):
        main(dpr_args)
    assert last_lines(capsys, 1)[0] == (f"error: DataFormatError: {corpus}, line 6: invalid UTF-8 "
                                        "(byte 0xff at byte 31 of the line)")


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.temprature", "3"],
     "error: model (lightning_modules.ContrastiveRetriever): Option 'temprature' is not accepted (the options: "
     "python train.py fit --model.help lightning_modules.ContrastiveRetriever)"),
    (["--model.init_args.loss.init_args.temperature", "warm"],
     "error: model.loss.temperature (retrieval.losses.InfoNCE): Expected a <class 'float'>. Got value: warm"),
    (["--trainer.max_epochz", "3"], "error: unrecognized arguments: --trainer.max_epochz 3"),
])
def test_config_errors_are_short_with_the_useful_line_last(capsys, override, expected):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--config", "configs/dpr_scifact.yaml", *override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1] == expected


def test_short_error_keeps_unknown_messages_whole():
    assert short_error("Unrecognized arguments: --foo") == "Unrecognized arguments: --foo"


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n   bad: [\n")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--config", "configs/dpr_scifact.yaml", "--config", str(bad)])
    assert exit_.value.code == 2
    assert last_lines(capsys, 1) == [f"error: {bad}, line 3, column 7: YAML syntax error: mapping values are not "
                                     "allowed here"]


def test_missing_config_file_is_named(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--config", "configs/no_such.yaml"])
    assert last_lines(capsys, 1) == ["error: --config configs/no_such.yaml: file not found"]


def test_help_mentions_the_default_run_the_configs_and_model_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "default: fit, test the best checkpoint, export" in out and "--model.help" in out
    assert "dpr_scifact" in out and "contriever_scifact" in out and "trainer presets" in out


def test_library_errors_keep_their_traceback(capsys, monkeypatch):
    """Only deliberate messages from this project are shortened; an error inside a library is a bug to debug."""
    def boom(args=None):
        import torch

        torch.zeros(2) @ torch.zeros(3)

    monkeypatch.setattr(train, "cli_main", boom)
    with pytest.raises(RuntimeError):
        main([])


def test_start_prints_no_bitsandbytes_kernel_noise_nor_tips():
    import logging

    from lightning.pytorch.utilities import rank_zero_info

    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handlers = [(logging.getLogger(n), Keep()) for n in ("lightning.pytorch.utilities.rank_zero",
                                                         "lightning.fabric.utilities.rank_zero")]
    for logger, handler in handlers:
        logger.addHandler(handler)
    try:
        rank_zero_info("💡 Tip: For seamless cloud uploads, try installing litmodels")
        rank_zero_info("kept line")
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
    assert seen == ["kept line"]


def test_progress_line_counts_rate_and_eta():
    from training.progress import ProgressLog, format_duration

    now = [100.0]
    lines = []
    log = ProgressLog("encode", 40, "batch", every_s=10, write=lines.append, clock=lambda: now[0])
    now[0] = 105.0
    assert log.update(10) is None  # 5 s < every_s: nothing written yet
    now[0] = 110.0
    assert log.update(10) == "encode: 20/40 (50%), 2.00 batch/s, ETA 10s, elapsed 10s"
    now[0] = 130.0
    log.update(20)
    assert lines[-1] == "encode: 40/40 (100%), 1.33 batch/s, ETA 0s, elapsed 30s"
    assert log.close() is None and len(lines) == 2  # nothing new since the last line
    assert (format_duration(75), format_duration(3700), format_duration(9)) == ("1m15s", "1h01m", "9s")


def test_long_encoding_writes_progress_lines_off_a_terminal(tiny_bert_dir, capsys, monkeypatch):
    from retrieval.encoders import Encoder

    monkeypatch.setenv("RAGKIT_PROGRESS_EVERY", "0")
    Encoder(tiny_bert_dir, max_length=16).encode([f"text {i}" for i in range(5)], batch_size=2, desc="corpus")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err if line.startswith("corpus:")] == [
        "corpus: 1/3 (33%)", "corpus: 2/3 (67%)", "corpus: 3/3 (100%)"]
