"""SelfCorrectEvaluator: two-attempt evaluation (SCoRe's protocol, docs/methods/score.md) as the test loop of an
evaluation-only module.

Methods (``method``):
  two_attempts  attempt 1; SCoRe's fixed self-correction instruction; attempt 2 (the paper's "base model"
                row when ``lm`` is the base model);
  self_refine   Self-Refine: attempt 1; "review it" -> a critique; "revise using it" -> attempt 2.
The problems, the first-attempt prompt and any demonstrations come from the DataModule
(``datamodules.self_correction.SelfCorrectionDataModule``); rewards are the task's metric (math answer
checking, or unit tests in the sandbox). Logs Accuracy@t1, Accuracy@t2, Delta(t1,t2), Delta_i->c and
Delta_c->i over every rank's problems (each once), sampled pairs of attempts as TensorBoard text, and writes
one record per problem to ``attempts.jsonl`` in the log directory (``training.records``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import lightning as L

from rl.self_correction import BASELINES, attempt_metrics, evaluate_two_attempts, make_env
from training.distributed import gather_objects
from training.models import load_causal_lm
from training.records import code_block, log_texts, merge_records, write_jsonl
from training.settings import LM


class SelfCorrectEvaluator(L.LightningModule):
    """Args:
        method: ``two_attempts`` or ``self_refine``.
        lm: the generator (``training.settings.LM``; ``smollm2-135m-instruct`` = the offline default).
        task: a registered task (``tasks.registry``) or a kind (``math``, ``code``), for the reward, the
            instruction and the first-attempt prompt; default: the DataModule's task.
        greedy: greedy decoding (the paper's evaluation); else sampling at ``temperature``.
        max_turn_tokens: tokens per generated turn; max_response_tokens: per problem, all turns and the
            instructions together (default: turns x max_turn_tokens + 512).
        num_examples: pairs of attempts logged as text (a seeded sample of the problems).
    """

    evaluation_only = True

    def __init__(self, method: str = "two_attempts", lm: LM = LM(), task: str | None = None, greedy: bool = True,
                 temperature: float = 1.0, max_turn_tokens: int = 256, max_response_tokens: int | None = None,
                 num_examples: int = 5, seed: int = 0):
        super().__init__()
        if method not in BASELINES:
            raise ValueError(f"unknown method {method!r}; expected one of {sorted(BASELINES)}")
        # Lightning refuses a key in both the module's and the DataModule's hparams with different values (None)
        self.save_hyperparameters(ignore=["task"])
        self.lm, self.task = lm, task  # lm: the dataclass itself (hparams holds it as a dict)
        self.generator = self.tokenizer = self.env = self.problem_format = None
        self.records: list[dict] = []

    def setup(self, stage: str) -> None:
        hp = self.hparams
        dm = self.trainer.datamodule
        self.task = self.task or getattr(getattr(dm, "hparams", None), "task", None)
        if self.task is None:
            raise ValueError("SelfCorrectEvaluator: no task (set model.init_args.task, or use "
                             "SelfCorrectionDataModule)")
        self.problem_format = getattr(dm, "problem_format", None)
        if self.generator is None:
            self.generator, self.tokenizer = load_causal_lm(self.lm.name_or_path, **self.lm.load_kwargs(),
                                                            device=self.device)
            self.generator.eval()
        chat = self.problem_format.chat if self.problem_format is not None else True
        self.env = make_env(hp.method, self.tokenizer, self.task, chat=chat)

    def configure_optimizers(self):
        return None

    def on_test_epoch_start(self) -> None:
        self.records, self._start = [], time.perf_counter()

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        hp = self.hparams
        # 1. attempt 1, the instruction(s), attempt 2; 2. each attempt graded by the task's metric
        out = evaluate_two_attempts(self.generator, self.tokenizer, batch, self.task, env=self.env,
                                    problem_format=self.problem_format, greedy=hp.greedy, temperature=hp.temperature,
                                    max_turn_tokens=hp.max_turn_tokens, max_response_tokens=hp.max_response_tokens,
                                    batch_size=len(batch), with_metrics=False)
        self.records.extend(out["records"])

    def on_test_epoch_end(self) -> None:
        # 3. metrics over every rank's problems, each once (the distributed sampler repeats some to even out)
        records = merge_records(gather_objects(self.records))
        self.records = records
        metrics = attempt_metrics([r["r1"] for r in records], [r["r2"] for r in records])
        # identical on every rank (computed from the gathered records): no reduction needed
        self.log_dict({f"test/{k}": float(v) for k, v in metrics.items()}, sync_dist=False)
        self.log("test/seconds", time.perf_counter() - self._start, sync_dist=False, rank_zero_only=True)
        log_dir = Path(self.trainer.log_dir or ".")  # a broadcast: every rank must ask
        if not self.trainer.is_global_zero:
            return
        # 4. per-problem records and sampled pairs of attempts
        write_jsonl(log_dir / "attempts.jsonl", records)
        sample = random.Random(self.hparams.seed).sample(records, min(self.hparams.num_examples, len(records)))
        log_texts(self.logger, f"attempts/{self.hparams.method}", [attempt_pair_text(r) for r in sample])
        log_texts(self.logger, "metrics", [" | ".join(f"{k} {v:.4g}" for k, v in metrics.items())], step=0)


def attempt_pair_text(record: dict) -> str:
    """Markdown of one problem's attempts for TensorBoard (code blocks keep the whitespace)."""
    gold = f"  \n**gold** {record['answer']}" if "answer" in record else ""
    parts = [f"**{record['id']}** r1 = {record['r1']:.0f}, r2 = {record['r2']:.0f}{gold}", "**prompt**",
             code_block(record["prompt"])]
    for k, text in enumerate(record["turns"]):
        parts += [f"**turn {k}**", code_block(text)]
    return "\n\n".join(parts)
