"""Self-correction (SCoRe, Kumar et al. 2024; docs/methods/score.md) on the RL core: the two-attempt environment
(attempt 1, the task's fixed self-correction instruction, attempt 2), the Self-Refine baseline (Madaan et al.
2023: the model critiques its attempt, then revises it, a three-turn environment built from the same
chat-template pieces), the metrics, and a greedy two-attempt evaluation on ``rl.rollout``. The task side
(problems, rewards, prompts, instructions) is ``tasks.registry``.

Metrics over N problems with binary rewards r1 (attempt 1) and r2 (attempt 2)::

    Accuracy@t1 = mean(r1)            Accuracy@t2 = mean(r2)          Delta(t1,t2) = Accuracy@t2 - Accuracy@t1
    Delta_i->c  = #{r1 = 0, r2 = 1} / N   (wrong, then right)
    Delta_c->i  = #{r1 = 1, r2 = 0} / N   (right, then wrong)         so Delta = Delta_i->c - Delta_c->i
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rl.envs import Environment, Reply, Turn, TwoAttemptEnv
from tasks.problem_format import ProblemFormat
from tasks.prompts import SELF_REFINE_FEEDBACK, SELF_REFINE_REFINE
from tasks.registry import reward_health, task_instruction, task_kind, task_reward  # noqa: F401 (reward_health: for score.py)

# -- environments -------------------------------------------------------------------------------------------

def score_instruction(task: str, instruction: str | None = None) -> str:
    """The two-attempt instruction: ``instruction``, or the task's (SCoRe's paper prompt) when none is given."""
    return task_instruction(task) if instruction is None else instruction


def two_attempt_env(tokenizer, task: str, instruction: str | None = None, chat: bool = True) -> TwoAttemptEnv:
    """SCoRe's two-attempt environment for ``task``: the paper's instruction as a user turn of the chat
    template (plain ``\\n\\n{instruction}\\n\\n`` without one)."""
    instruction = score_instruction(task, instruction)
    if chat and getattr(tokenizer, "chat_template", None):
        env = TwoAttemptEnv.for_chat(tokenizer, instruction)
    else:
        env = TwoAttemptEnv(instruction)
    env.attempt_turns = (0, 1)
    return env


def attempt_format(fmt: ProblemFormat, task: str, instruction: str | None, env_given: bool = False) -> ProblemFormat:
    """``fmt``; when its demonstrations show both attempts, with the two-attempt instruction they show: ``instruction``
    or the task's (that of :func:`two_attempt_env`). A custom environment's instruction is not known here."""
    if fmt.shot_attempts == 1:
        return fmt
    if env_given:
        raise ValueError("SCoRe: shot_attempts 2 shows the default two-attempt instruction in the demonstrations; "
                         "with env given, use shot_attempts 1")
    return fmt.with_instruction(score_instruction(task, instruction))


class InstructionSequenceEnv(Environment):
    """Generation turns separated by fixed instructions: turn k is followed by ``steps[k]`` (each a
    :class:`TwoAttemptEnv` holding the chat-template text of one instruction), until the last turn.
    ``attempt_turns`` says which turns are the graded attempts (the others, e.g. a critique, are not)."""

    def __init__(self, steps: Sequence[TwoAttemptEnv], attempt_turns: tuple[int, int]):
        if not steps:
            raise ValueError("InstructionSequenceEnv: no instruction steps")
        if not 0 <= attempt_turns[0] < attempt_turns[1] <= len(steps):
            raise ValueError(f"InstructionSequenceEnv: attempt_turns {attempt_turns} outside turns 0..{len(steps)}")
        self.steps, self.attempt_turns = list(steps), tuple(attempt_turns)
        self.max_turns = len(self.steps) + 1
        self.reset(0)

    def reset(self, n: int) -> None:
        self.n, self.turns = n, [0] * n

    def step(self, turns: list[Turn]) -> list[Reply]:
        replies = []
        for t in turns:
            self.turns[t.row] = t.turn + 1
            if t.turn >= len(self.steps):
                replies.append(Reply(done=True))
                continue
            replies.append(Reply(append=self.steps[t.turn].text_after(t.eos), done=False))
        return replies

    def counters(self) -> dict[str, list[int]]:
        return {"turns": list(self.turns)}


def self_refine_env(tokenizer, task: str, chat: bool = True) -> InstructionSequenceEnv:
    """Self-Refine: attempt 1; "review it" -> a critique (turn 1, not graded); "revise using it" -> attempt 2."""
    kind = task_kind(task)
    steps = [two_attempt_env(tokenizer, task, SELF_REFINE_FEEDBACK[kind], chat),
             two_attempt_env(tokenizer, task, SELF_REFINE_REFINE[kind], chat)]
    return InstructionSequenceEnv(steps, attempt_turns=(0, 2))


BASELINES = {"two_attempts": two_attempt_env, "self_refine": self_refine_env}


def make_env(method: str, tokenizer, task: str, chat: bool = True) -> Environment:
    """``two_attempts`` (the base model prompted twice with SCoRe's instruction) or ``self_refine``."""
    if method not in BASELINES:
        raise ValueError(f"unknown self-correction method {method!r}; expected one of {sorted(BASELINES)}")
    return BASELINES[method](tokenizer, task, chat=chat)


def attempt_texts(turn_texts: Sequence[Sequence[str]], attempt_turns: tuple[int, int] = (0, 1)) -> tuple[list, list]:
    """(attempt-1 texts, attempt-2 texts) from a rollout's per-row turn texts. A row that ran out of room
    before its second attempt has attempt 2 = "" (graded as wrong)."""
    a, b = attempt_turns
    first = [t[a] if len(t) > a else "" for t in turn_texts]
    second = [t[b] if len(t) > b else "" for t in turn_texts]
    return first, second


# -- metrics ------------------------------------------------------------------------------------------------

def attempt_metrics(r1: Sequence[float], r2: Sequence[float]) -> dict[str, float]:
    """SCoRe's metrics from per-problem binary rewards of attempt 1 and attempt 2 (see the module docstring)."""
    if len(r1) != len(r2):
        raise ValueError(f"attempt_metrics: {len(r1)} first-attempt but {len(r2)} second-attempt rewards")
    if not r1:
        raise ValueError("attempt_metrics: no problems")
    for name, rs in (("r1", r1), ("r2", r2)):
        bad = [x for x in rs if float(x) not in (0.0, 1.0)]
        if bad:
            raise ValueError(f"attempt_metrics: {name} must be binary (0/1), got {bad[0]!r}")
    n = len(r1)
    a1, a2 = sum(map(float, r1)) / n, sum(map(float, r2)) / n
    i2c = sum(1 for x, y in zip(r1, r2) if float(x) == 0.0 and float(y) == 1.0) / n
    c2i = sum(1 for x, y in zip(r1, r2) if float(x) == 1.0 and float(y) == 0.0) / n
    return {"accuracy@t1": a1, "accuracy@t2": a2, "delta(t1,t2)": a2 - a1, "delta_i->c": i2c, "delta_c->i": c2i,
            "n": float(n)}


# -- evaluation ---------------------------------------------------------------------------------------------

def evaluate_two_attempts(model, tokenizer, examples: Sequence[dict], task: str | None = None, *,
                          env: Environment | None = None, method: str = "two_attempts",
                          problem_format: ProblemFormat | None = None, greedy: bool = True, temperature: float = 1.0,
                          max_turn_tokens: int = 256, max_response_tokens: int | None = None, batch_size: int = 8,
                          reward: Callable | None = None, with_metrics: bool = True,
                          generation_kwargs: dict | None = None) -> dict:
    """Two attempts per example through ``rl.rollout`` with the self-correction environment (``env``, else
    ``make_env(method, ...)``), graded by the task's reward.

    Returns ``{"records": [...], "metrics": attempt_metrics(r1, r2)}`` with one record per example: ``id``,
    ``task``, ``prompt``, ``turns`` (every generated turn's text), ``attempt_1``, ``attempt_2``, ``r1``, ``r2``
    and the gold ``answer`` for math. ``with_metrics=False`` skips the metrics (a shard of a distributed run).
    ``generation_kwargs`` go to ``model.generate`` (e.g. a ``logits_processor``).
    """
    if not examples:
        raise ValueError("evaluate_two_attempts: no examples")
    from rl.rollout import rollout  # torch + transformers; the rest of this module needs neither

    task = task or examples[0]["task"]
    fmt = problem_format or ProblemFormat()
    env = env if env is not None else make_env(method, tokenizer, task, chat=fmt.chat)
    attempt_turns = getattr(env, "attempt_turns", (0, 1))
    reward = reward or task_reward(task)
    if max_response_tokens is None:  # every turn's budget plus room for the instructions between them
        max_response_tokens = env.max_turns * max_turn_tokens + 512
    records = []
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start:start + batch_size])
        prompts = [fmt.render(tokenizer, ex, task) for ex in batch]
        out = rollout(model, tokenizer, prompts, env, max_turn_tokens=max_turn_tokens,
                      max_response_tokens=max_response_tokens, do_sample=not greedy, temperature=temperature,
                      compute_logprobs=False, generation_kwargs=generation_kwargs)
        first, second = attempt_texts(out.turn_texts, attempt_turns)
        r1, r2 = reward(first, batch), reward(second, batch)
        for ex, prompt, turns, t1, t2, x, y in zip(batch, prompts, out.turn_texts, first, second, r1, r2):
            rec = {"id": ex["id"], "task": ex.get("task", task), "prompt": prompt, "turns": list(turns),
                   "attempt_1": t1, "attempt_2": t2, "r1": float(x), "r2": float(y)}
            if "answer" in ex:
                rec["answer"] = ex["answer"]
            records.append(rec)
    metrics = attempt_metrics([r["r1"] for r in records], [r["r2"] for r in records]) if with_metrics else {}
    return {"records": records, "metrics": metrics}
