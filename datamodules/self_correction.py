"""Problems for self-correction (SCoRe training and the two-attempt evaluation) of any task of ``tasks.registry``
(GSM8K, MATH-500 or a user's MATH-format JSONL, HumanEval, MBPP, generated arithmetic, or one a new file
registers). Batches are lists of example dicts (the module renders prompts with the policy's tokenizer through
:attr:`SelfCorrectionDataModule.problem_format`).

Splits: each task's default train / test sources (``Task.train_file`` / ``test_file``: GSM8K's two files, MBPP's
paper ranges of ``mbpp.jsonl.gz``; MATH-500 and HumanEval are test-only, a MATH-format training file can be given).

Slices (``slice``): a named filter applied to every split (and to the few-shot pool), e.g. ``short``:
GSM8K problems whose reference solution has at most ``max_steps`` lines (the model's "half-solved" slice,
see runs/half_solved.md). ``limit_*`` keeps the first N problems after the slice (test in file order, train
after a seeded shuffle).
"""

from __future__ import annotations

import random

import lightning as L
from torch.utils.data import DataLoader

from datamodules.beir import resolve_data_dir
from datamodules.qa import needs_split
from datamodules.resumable import StatefulDataLoader, train_loader
from tasks.problem_format import ProblemFormat, check_shot_attempts
from tasks.registry import Task, get_task


def solution_steps(example: dict) -> int:
    """Lines of a math example's reference solution before its final answer (GSM8K: one calculation each)."""
    text = example.get("solution") or ""
    return len([line for line in text.split("####")[0].splitlines() if line.strip()])


def _short(example: dict, max_steps: int) -> bool:
    if "solution" not in example:
        raise ValueError(f"slice 'short' needs math examples with a 'solution'; {example.get('id')!r} has none")
    return solution_steps(example) <= max_steps


SLICES = {"short": _short}


def as_list(rows: list[dict]) -> list[dict]:
    return rows


class SelfCorrectionDataModule(L.LightningDataModule):
    """Args:
        task: a registered task (``tasks.registry``): gsm8k, math500, math (a user's MATH-format JSONL: give
            test_file/train_file), humaneval, mbpp, arithmetic (generated "What is a + b?"), or
            ``package.module:name`` of a file that registers one.
        train_file / test_file: override the task's sources (relative paths from the project root).
        options: the task's own settings (``Task.options``), e.g. mbpp ``{train_split, test_split, shots_split}``
            (prompt, train, validation, test), arithmetic ``{num_problems, digits, op}``.
        limit_train / limit_val / limit_test: first N problems (after the slice); val is the first
            ``limit_val`` test problems (none when unset).
        slice: a name in ``SLICES`` (``short``: at most ``max_steps`` solution lines), or None.
        prompt: the first-attempt template (a ``tasks.prompts.PROMPTS`` name, a literal template, or None for
            the task's own); ``num_shots`` demonstrations from ``shots_file`` (default: the task's pool: GSM8K
            train, MBPP's prompt split, Minerva's four MATH examples); ``chat``: use the chat template;
            ``shot_attempts``: 2 shows each demonstration as a whole two-attempt exchange (its answer, the
            instruction, the same answer: ``tasks.problem_format.ProblemFormat``; SCoRe supplies the instruction).
        batch_size / eval_batch_size: problems per training / evaluation batch.
        seed: the training order.
    """

    def __init__(self, task: str = "gsm8k", train_file: str | None = None, test_file: str | None = None,
                 options: dict | None = None, limit_train: int | None = None, limit_val: int | None = None,
                 limit_test: int | None = None, slice: str | None = None, max_steps: int = 2,
                 prompt: str | None = None, num_shots: int = 0, shots_file: str | None = None, chat: bool = True,
                 shot_attempts: int = 1, batch_size: int = 8, eval_batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.options = get_task(task).make_options(options)
        if slice is not None and slice not in SLICES:
            raise ValueError(f"unknown slice {slice!r}; expected one of {sorted(SLICES)} or null")
        if num_shots < 0:
            raise ValueError(f"num_shots must be >= 0, got {num_shots}")
        check_shot_attempts(shot_attempts)  # an early error from the config, before setup builds the format
        self.save_hyperparameters()
        self.rows: dict[str, list[dict]] = {}
        self.shots: list[dict] = []

    @property
    def task(self) -> Task:
        """The registry's entry (looked up by name: a spawned process gets the name, not the entry)."""
        return get_task(self.hparams.task)

    # -- reading --------------------------------------------------------------------------------------
    def _load(self, source: str, role: str) -> list[dict]:
        source = str(resolve_data_dir(source)) if self.task.reads_files else source
        return self.task.load(source, role, self.options)

    def _keep(self, rows: list[dict]) -> list[dict]:
        hp = self.hparams
        if hp.slice is None:
            return rows
        return [r for r in rows if SLICES[hp.slice](r, hp.max_steps)]

    def _load_shots(self) -> list[dict]:
        hp, task = self.hparams, self.task
        if hp.num_shots == 0:
            return []
        source = hp.shots_file if hp.shots_file is not None else task.shots
        if source is None:
            raise ValueError(f"task {task.name!r} has no few-shot pool; set shots_file or num_shots: 0")
        pool = self._load(source, "shots") if isinstance(source, str) else list(source)
        # a slice selects problems; demonstrations that bring their worked answer are kept as they are
        pool = self._keep(pool) if pool and "demonstration" not in pool[0] else pool
        if len(pool) < hp.num_shots:
            raise ValueError(f"num_shots={hp.num_shots} but the shot pool has {len(pool)} problems")
        return pool[:hp.num_shots]

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        train_file, test_file = hp.train_file or self.task.train_file, hp.test_file or self.task.test_file
        if not needs_split("train", stage) or "train" in self.rows:
            train_file = None   # an evaluation-only run never reads (nor fails on) the training file
        if "test" in self.rows:
            test_file = None
        if not self.shots:
            self.shots = self._load_shots()
        shot_ids = {s["id"] for s in self.shots}
        if test_file:
            # a demonstration is never a test problem (it can be, when shots and test share a file)
            test = [r for r in self._keep(self._load(test_file, "test")) if r["id"] not in shot_ids]
            self.rows["test"] = test[:hp.limit_test] if hp.limit_test is not None else test
            if hp.limit_val:
                self.rows["val"] = test[:hp.limit_val]
        if train_file:
            train = [r for r in self._keep(self._load(train_file, "train")) if r["id"] not in shot_ids]
            random.Random(hp.seed).shuffle(train)
            self.rows["train"] = train[:hp.limit_train] if hp.limit_train is not None else train
        for split, rows in self.rows.items():
            if not rows:
                raise ValueError(f"SelfCorrectionDataModule: the {split} split of task {hp.task!r} is empty "
                                 f"(slice={hp.slice!r}, limit)")

    @property
    def problem_format(self) -> ProblemFormat:
        """How the module renders a first attempt: the prompt template, the demonstrations, chat or not."""
        hp = self.hparams
        return ProblemFormat(hp.prompt, tuple(self.shots), hp.chat, shot_attempts=hp.shot_attempts)

    # -- loaders --------------------------------------------------------------------------------------
    def _split(self, name: str) -> list[dict]:
        if name not in self.rows:
            files = {"train": "train_file", "test": "test_file", "val": "limit_val"}
            raise ValueError(f"SelfCorrectionDataModule: task {self.hparams.task!r} has no {name} split "
                             f"(set data.init_args.{files[name]})")
        return self.rows[name]

    def train_dataloader(self) -> StatefulDataLoader:
        rows = self._split("train")
        return train_loader(rows, self.hparams.batch_size, self.hparams.seed, self.trainer, collate_fn=as_list,
                            drop_last=len(rows) >= self.hparams.batch_size)

    def val_dataloader(self):
        if "val" not in self.rows:
            return []
        return DataLoader(self.rows["val"], batch_size=self.hparams.eval_batch_size, collate_fn=as_list)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._split("test"), batch_size=self.hparams.eval_batch_size, collate_fn=as_list)
