"""The task registry: one entry per self-correction task, the one place that knows a task by its name.

A :class:`Task` says how to read its problems, how to grade an answer (the reward, which is also the evaluation
metric), how to show a problem at the first attempt, where its default data and demonstrations are, and which
self-correction instruction follows attempt 1. The self-correction DataModule, the two-attempt evaluation, the
evaluator and SCoRe look a task up here by name. Built in: ``gsm8k``, ``math`` (a user's MATH-format JSONL),
``math500``, ``humaneval``, ``mbpp``, ``arithmetic`` (generated). A new task is one new file calling
:func:`register_task`, named in a config as ``"package.module:name"`` (docs/methods/self_correction.md)::

    register_task(Task("reverse", kind="math", load=load_reverse, reward=reverse_reward,
                       prompt="Spell the word backwards: {problem}", test_file="data/reverse.jsonl"))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tasks.arithmetic import ArithmeticOptions, load_arithmetic
from tasks.loaders import MBPP_SPLITS, load_gsm8k, load_humaneval, load_math, load_mbpp
from tasks.math_grading import math_reward
from tasks.prompts import INSTRUCTIONS, MATH_SHOTS
from tasks.sandbox import code_reward

Reward = Callable[[Sequence[str], Sequence[dict]], list[float]]
KIND_REWARDS: dict[str, Reward] = {"math": math_reward, "code": code_reward}


@dataclass(frozen=True)
class Task:
    """A self-correction task.

    Args:
        name: what configs call it (``data.init_args.task``, SCoRe's ``task``).
        kind: ``math`` or ``code``: the default instruction, the Self-Refine prompts, the demonstrations' format.
        load: ``load(source, role, options) -> examples`` (dicts with ``id``, ``task``, ``problem`` and what the
            reward reads); ``role`` is ``train``, ``test`` or ``shots``; ``options`` an instance of ``options``.
        reward: ``reward(responses, examples) -> list[float]`` of 0/1, also the evaluation metric.
        prompt: the first-attempt template: a ``tasks.prompts.PROMPTS`` name or a literal with ``{problem}``
            (None: the ``math`` prompt for a math task; a code task needs its own).
        train_file / test_file: default sources (paths from the project root; None: no such split by default).
        shots: the default few-shot pool: a source read with ``load(source, "shots", options)``, or the
            demonstrations themselves (each with ``id``, ``problem`` and ``demonstration``); None: none.
        instruction: the self-correction instruction after attempt 1 (None: SCoRe's, by ``kind``).
        options: a dataclass of the loader's settings (``data.init_args.options``); None: it takes none.
        reads_files: sources are files (resolved from the project root); False: names of generated splits.
    """
    name: str
    kind: str
    load: Callable[[str, str, Any], list[dict]]
    reward: Reward
    prompt: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    shots: str | tuple[dict, ...] | None = None
    instruction: str | None = None
    options: type | None = None
    reads_files: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KIND_REWARDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {sorted(KIND_REWARDS)}")

    def make_options(self, options: dict | None) -> Any:
        """The loader's settings from a config's ``options`` mapping; unknown keys name the accepted ones."""
        if self.options is None:
            if options:
                raise ValueError(f"task {self.name!r} takes no options, got {sorted(options)}")
            return None
        known = [f.name for f in fields(self.options)]
        unknown = sorted(set(options or {}) - set(known))
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown option(s) {unknown}; expected some of {known}")
        return self.options(**(options or {}))


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Adds ``task`` under its name; a second, different task of the same name is refused."""
    if task.name in _TASKS and _TASKS[task.name] != task:
        raise ValueError(f"a task named {task.name!r} is already registered (tasks.registry)")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task registered as ``name``; ``"package.module:name"`` imports the module (which registers it) first."""
    if name not in _TASKS and ":" in name:
        module, _, short = name.partition(":")
        importlib.import_module(module)
        if short not in _TASKS:
            raise ValueError(f"module {module!r} registers no task named {short!r}; tasks: {task_names()}")
        return _TASKS[short]
    if name not in _TASKS:
        raise ValueError(f"unknown self-correction task {name!r}; expected one of {task_names()} (the kinds "
                         "'math', 'code' where a kind will do), or 'package.module:name' of a file that registers one")
    return _TASKS[name]


def task_names() -> list[str]:
    return sorted(_TASKS)


def _lookup(name: str) -> tuple[str, Task | None]:
    """(kind, task) for a task name, or (kind, None) for a kind alone (``code`` is no task)."""
    if name in KIND_REWARDS and name not in _TASKS:
        return name, None
    task = get_task(name)
    return task.kind, task


def task_kind(name: str) -> str:
    """``math`` or ``code`` for a task name, or a kind itself."""
    return _lookup(name)[0]


def task_reward(name: str) -> Reward:
    """The task's reward, which is also its evaluation metric (a kind: ``math_reward`` or ``code_reward``)."""
    kind, task = _lookup(name)
    return task.reward if task is not None else KIND_REWARDS[kind]


def task_instruction(name: str) -> str:
    """The self-correction instruction after attempt 1: the task's own, else SCoRe's for its kind."""
    kind, task = _lookup(name)
    return task.instruction if task is not None and task.instruction is not None else INSTRUCTIONS[kind]


def reward_health() -> dict[str, float]:
    """Running counts of samples whose reward was decided by something other than the answer: an exception
    while grading or running (reward 0), or a deadline (math: ``tasks.math_grading.GRADING_TIMEOUTS``; code: the
    sandbox's ``timeout``). A trainer logs them so a user sees how many rewards a limit, not the answer, set."""
    from tasks.math_grading import GRADING_ERRORS, GRADING_TIMEOUTS
    from tasks.sandbox import REWARD_STATS

    return {"math_errors": float(sum(GRADING_ERRORS.values())), "math_timeouts": float(sum(GRADING_TIMEOUTS.values())),
            "code_exceptions": float(REWARD_STATS["exception"]), "code_timeouts": float(REWARD_STATS["timeout"])}


# -- the built-in tasks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MBPPOptions:
    """Which of MBPP's paper ranges (prompt, train, validation, test) each role reads."""
    train_split: str = "train"
    test_split: str = "test"
    shots_split: str = "prompt"

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) not in MBPP_SPLITS:
                raise ValueError(f"mbpp options: {f.name} {getattr(self, f.name)!r} not in {sorted(MBPP_SPLITS)}")


def _gsm8k(source: str, role: str, options: None) -> list[dict]:
    return load_gsm8k(source)


def _math(source: str, role: str, options: None) -> list[dict]:
    return load_math(source, "math")


def _math500(source: str, role: str, options: None) -> list[dict]:
    return load_math(source, "math500")


def _humaneval(source: str, role: str, options: None) -> list[dict]:
    return load_humaneval(source)


def _mbpp(source: str, role: str, options: MBPPOptions) -> list[dict]:
    return load_mbpp(source, getattr(options, f"{role}_split"))


# (module-level loaders, not lambdas: a DataModule is pickled to spawned processes)
MINERVA_SHOTS = tuple(dict(s, id=f"minerva/{i}") for i, s in enumerate(MATH_SHOTS))
GSM8K_TRAIN = "data/gsm8k/train.jsonl"
MBPP_FILE = "data/mbpp/mbpp.jsonl.gz"

register_task(Task("gsm8k", "math", _gsm8k, math_reward, train_file=GSM8K_TRAIN, test_file="data/gsm8k/test.jsonl",
                   shots=GSM8K_TRAIN))
register_task(Task("math", "math", _math, math_reward, shots=MINERVA_SHOTS))
register_task(Task("math500", "math", _math500, math_reward, test_file="data/math500/test.jsonl", shots=MINERVA_SHOTS))
register_task(Task("humaneval", "code", _humaneval, code_reward, prompt="humaneval",
                   test_file="data/humaneval/HumanEval.jsonl.gz"))
register_task(Task("mbpp", "code", _mbpp, code_reward, prompt="mbpp", train_file=MBPP_FILE, test_file=MBPP_FILE,
                   shots=MBPP_FILE, options=MBPPOptions))
register_task(Task("arithmetic", "math", load_arithmetic, math_reward, train_file="train", test_file="test",
                   shots="shots", options=ArithmeticOptions, reads_files=False))
