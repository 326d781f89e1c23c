"""Early, clear errors (issue 22, item 9): each bad input fails before the work it would spoil, with a message
naming the option or the file. (Checkpoint paths: test_resume_checks.py; empty gold answers:
test_no_silent_drops.py.)"""

import json
import math
import os
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from train import main

pytestmark = pytest.mark.usefixtures("one_thread")


# -- ReplugLSR: a retrieval depth deeper than the corpus fails at setup, not after the whole fit ------------------
def _lsr_args(tiny_bert_dir, tiny_llama_dir, tmp_path, *extra):
    from test_replug_lsr import _qa_args

    return [*_qa_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--trainer.max_steps", "1"), *extra]


def test_lsr_eval_k_deeper_than_the_corpus_fails_before_fit(tiny_bert_dir, tiny_llama_dir, tmp_path, capsys):
    args = _lsr_args(tiny_bert_dir, tiny_llama_dir, tmp_path, "--model.init_args.eval_k", "20")
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: ValueError: ReplugLSR.eval_k=20 is more than the 14 passages of the corpus "
                    f"{tmp_path / 'pool'}; set it to 14 or less")
    assert not list(tmp_path.rglob("*.ckpt")), "the check must come before any training step"


def test_lsr_score_cache_that_is_not_a_database_names_the_file(tiny_bert_dir, tiny_llama_dir, tmp_path, capsys):
    cache = tmp_path / "cache" / "scores.sqlite"
    cache.parent.mkdir()
    cache.write_text("not a database\n" * 100)
    with pytest.raises(SystemExit) as exit_:
        main(_lsr_args(tiny_bert_dir, tiny_llama_dir, tmp_path))
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: ScoreCacheError: LM score cache {cache}: cannot create the table (DatabaseError: "
                           "file is not a database); set model.init_args.scoring.cache to another file"), last


def test_score_cache_errors_name_the_file(tmp_path):
    from retrieval.lsr import LMScoreCache, ScoreCacheError

    with pytest.raises(ScoreCacheError, match=rf"LM score cache {tmp_path}: cannot open \(OperationalError"):
        LMScoreCache(tmp_path, "lm", "prompt")  # a folder
    cache = LMScoreCache(tmp_path / "s.sqlite", "lm", "prompt")
    cache.put({"k": 1.5})
    cache.db.execute("DROP TABLE scores")
    with pytest.raises(ScoreCacheError, match=rf"LM score cache {tmp_path / 's.sqlite'}: cannot read"):
        cache.get(["k"])
    with pytest.raises(ScoreCacheError, match=rf"LM score cache {tmp_path / 's.sqlite'}: cannot write"):
        cache.put({"k": 2.0})


# -- a bad train_file does not break an evaluation-only run -----------------------------------------------------
def _qa_files(root: Path) -> tuple[Path, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    good = root / "test.jsonl"
    good.write_text("".join(json.dumps({"id": f"q{i}", "question": f"what is in passage word{i}?", "answers": [f"a{i}"],
                                        "gold_id": f"d{i}"}) + "\n" for i in range(3)))
    bad = root / "train.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n{"question": \n')
    corpus = [{"_id": f"d{i}", "title": "", "text": f"passage word{i} topic{i % 3}"} for i in range(30)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    return good, bad, root


def _datamodules(root: Path, tokenizer: str) -> dict:
    from datamodules.lsr import LSRQADataModule
    from datamodules.qa import QADataModule
    from datamodules.retrobust import RetRobustDataModule
    from datamodules.rl_prompts import RLPromptDataModule
    from datamodules.self_correction import SelfCorrectionDataModule

    good, bad, corpus = _qa_files(root)
    math_test = root / "math.jsonl"
    math_test.write_text(json.dumps({"problem": "1+1?", "solution": "\\boxed{2}"}) + "\n")
    return {
        "qa": lambda: QADataModule(test_file=str(good), train_file=str(bad), corpus=str(corpus)),
        "retrobust": lambda: RetRobustDataModule(train_file=str(bad), val_file=None, test_file=str(good),
                                                 corpus=str(corpus), tokenizer=tokenizer, low_rank_range=(2, 3)),
        "lsr_qa": lambda: LSRQADataModule(corpus=str(corpus), train_file=str(bad), test_file=str(good)),
        "rl_prompts": lambda: RLPromptDataModule(train_file=str(bad), test_file=str(good)),
        "self_correction": lambda: SelfCorrectionDataModule(task="math", train_file=str(bad), test_file=str(math_test)),
    }


@pytest.mark.parametrize("name", ["qa", "retrobust", "lsr_qa", "rl_prompts", "self_correction"])
def test_bad_train_file_does_not_break_evaluation_only_runs(name, tmp_path, tiny_llama_dir):
    make = _datamodules(tmp_path, tiny_llama_dir)[name]
    dm = make()
    for stage in ("test", "validate"):
        dm.setup(stage)
        assert dm.test_dataloader() is not None
    with pytest.raises(ValueError, match=r"train\.jsonl, line 2: invalid JSON"):
        dm.setup("fit")  # a run that trains still reads it, and names the line
    with pytest.raises(ValueError, match=r"train\.jsonl, line 2: invalid JSON"):
        make().setup("fit")


# -- options -------------------------------------------------------------------------------------------------
def test_num_problems_zero_is_a_clear_error():
    from datamodules.self_correction import SelfCorrectionDataModule

    with pytest.raises(ValueError, match=r"arithmetic options: num_problems must be >= 1 .* got 0"):
        SelfCorrectionDataModule(task="arithmetic", options={"num_problems": 0}, num_shots=2)


@pytest.mark.parametrize("proportions", [(math.nan, 0.5, 0.5), (0.5, math.inf, -math.inf), (math.nan,) * 3])
def test_non_finite_proportions_name_the_field(proportions):
    from datamodules.retrobust import RetRobustDataModule

    with pytest.raises(ValueError, match=r"RetRobustDataModule.proportions: expected 3 finite non-negative"):
        RetRobustDataModule(proportions=proportions)


@pytest.mark.parametrize("option", ["alpha", "beta1", "beta2"])
def test_negative_score_coefficients_are_refused(option, tiny_llama_dir):
    from lightning_modules.score import SCoRe
    from rl.score import Objective
    from training.settings import LM

    message = rf"SCoRe: alpha, beta1 and beta2 must be finite and >= 0, got .*{option}=-0.1"
    with pytest.raises(ValueError, match=message):
        SCoRe(LM(tiny_llama_dir), objective=Objective(**{option: -0.1}))
    SCoRe(LM(tiny_llama_dir), objective=Objective(alpha=0.0, beta1=0.0, beta2=0.0))  # zero: an ablation (no shaping, no KL)


# -- a full disk: one line naming the file and $TMPDIR's free space ---------------------------------------------
class FillDisk(Callback):
    """Writes to /dev/full (a real ENOSPC, no file name in the error) when training starts, as a checkpoint
    written through a temporary file in a full $TMPDIR does."""

    def on_train_start(self, trainer, pl_module):
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_naming_the_file_and_tmpdir(tiny_bert_dir, tiny_beir_dir, tmp_path, capsys):
    import tempfile

    args = ["--config", "configs/dpr_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.callbacks+=test_early_errors.FillDisk"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: OSError: No space left on device writing /dev/full (")
    assert f"$TMPDIR is {tempfile.gettempdir()} (" in last and "MiB free" in last
