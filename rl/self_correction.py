"""Self-correction (SCoRe, Kumar et al. 2024; docs/methods/score.md): first-attempt prompts per task, the fixed
self-correction instruction, the two-attempt environment, the metrics, and a greedy two-attempt evaluation
on ``rl.rollout``. Also the Self-Refine baseline (Madaan et al. 2023): the model critiques its attempt, then
revises it, as a three-turn environment built from the same chat-template pieces.

Tasks: ``gsm8k``, ``math`` / ``math500`` (any MATH-format set) are *math* (reward ``tasks.math_grading.math_reward``);
``humaneval`` and ``mbpp`` are *code* (reward ``tasks.sandbox.code_reward``). Examples are the dicts of ``tasks.loaders``.

Metrics over N problems with binary rewards r1 (attempt 1) and r2 (attempt 2)::

    Accuracy@t1 = mean(r1)            Accuracy@t2 = mean(r2)          Delta(t1,t2) = Accuracy@t2 - Accuracy@t1
    Delta_i->c  = #{r1 = 0, r2 = 1} / N   (wrong, then right)
    Delta_c->i  = #{r1 = 1, r2 = 0} / N   (right, then wrong)         so Delta = Delta_i->c - Delta_c->i
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from generation.prompts import named_template, render_messages
from rl.envs import Environment, Reply, Turn, TwoAttemptEnv

# -- tasks --------------------------------------------------------------------------------------------------

TASK_KINDS = {"gsm8k": "math", "math": "math", "math500": "math", "arithmetic": "math", "humaneval": "code",
              "mbpp": "code"}


def task_kind(task: str) -> str:
    """``math`` or ``code`` for a task name (gsm8k, math, math500, humaneval, mbpp) or a kind itself."""
    if task in ("math", "code"):
        return task
    if task not in TASK_KINDS:
        raise ValueError(f"unknown self-correction task {task!r}; expected one of {sorted(TASK_KINDS)} "
                         "(or the kinds 'math', 'code')")
    return TASK_KINDS[task]


def task_reward(task: str) -> Callable[[Sequence[str], Sequence[dict]], list[float]]:
    """The task's reward, which is also its evaluation metric: ``math_reward`` or ``code_reward``
    (both ``(responses, examples) -> list[float]`` of 0/1)."""
    if task_kind(task) == "math":
        from tasks.math_grading import math_reward

        return math_reward
    from tasks.sandbox import code_reward

    return code_reward


def reward_health() -> dict[str, float]:
    """Running counts of samples whose reward was decided by something other than the answer: an exception
    while grading or running (reward 0), or a deadline (math: ``tasks.math_grading.GRADING_TIMEOUTS``; code: the
    sandbox's ``timeout``). A trainer logs them so a user sees how many rewards a limit, not the answer, set."""
    from tasks.math_grading import GRADING_ERRORS, GRADING_TIMEOUTS
    from tasks.sandbox import REWARD_STATS

    return {"math_errors": float(sum(GRADING_ERRORS.values())), "math_timeouts": float(sum(GRADING_TIMEOUTS.values())),
            "code_exceptions": float(REWARD_STATS["exception"]), "code_timeouts": float(REWARD_STATS["timeout"])}


# -- instructions -------------------------------------------------------------------------------------------

FINAL_ANSWER_FORM = ('At the end of the Solution, when you give your final answer, write it in the form '
                     '"Final Answer: The final answer is $answer$. I hope it is correct."')

# SCoRe's self-correction instructions (the paper's appendix), verbatim.
INSTRUCTIONS = {
    "math": ("There might be an error in the solution above because of lack of understanding of the question. "
             "Please correct the error, if any, and rewrite the solution. Only output the final solution! "
             + FINAL_ANSWER_FORM),
    "code": ("There might be an error in the solution above because of lack of understanding of the question. "
             "Please correct the error, if any, and rewrite the solution. Only output the final correct Python "
             "program!"),
}

# Self-Refine (Madaan et al. 2023): feedback on the attempt, then a refinement using the feedback. The wording
# is ours (the paper's prompts are task-specific few-shot ones); the refine step asks for the same output
# format as SCoRe's instruction so both baselines are graded alike.
SELF_REFINE_FEEDBACK = {
    "math": ("Review the solution above step by step. Check each step for errors in understanding the question, "
             "in the reasoning and in the arithmetic, and say which step is wrong, if any. Do not rewrite the "
             "solution yet."),
    "code": ("Review the program above. Check it against the task and its examples for wrong logic, missed cases "
             "and errors, and say what is wrong, if anything. Do not rewrite the program yet."),
}
SELF_REFINE_REFINE = {
    "math": ("Using your feedback, correct the error, if any, and rewrite the solution. Only output the final "
             "solution! " + FINAL_ANSWER_FORM),
    "code": ("Using your feedback, correct the error, if any, and rewrite the program. Only output the final "
             "correct Python program!"),
}

# -- first-attempt prompts ----------------------------------------------------------------------------------

PROMPTS = {
    "math": "Solve the following math problem step by step. " + FINAL_ANSWER_FORM + "\n\nProblem:\n{problem}",
    "humaneval": ("Complete the following Python function. Write the whole function, with its signature, in one "
                  "```python code block.\n\n```python\n{problem}```"),
    # MBPP's own prompt (Austin et al. 2021): the task and its three asserts.
    "mbpp": ("You are an expert Python programmer, and here is your task: {problem} Your code should pass these "
             "tests:\n\n{tests}\n\nWrite the program in one ```python code block."),
    "mbpp_no_tests": ("You are an expert Python programmer, and here is your task: {problem}\n\nWrite the program "
                      "in one ```python code block."),
}
DEFAULT_PROMPT = {"gsm8k": "math", "math": "math", "math500": "math", "arithmetic": "math", "humaneval": "humaneval",
                  "mbpp": "mbpp"}

# Minerva's four MATH demonstrations (Lewkowycz et al. 2022, appendix D.2), whose answer line is the format
# SCoRe's instruction asks for. Used when a MATH-format set has no training split to draw shots from.
MATH_SHOTS = [
    {"problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "demonstration": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
                      "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, "
                      "so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
                      "Final Answer: The final answer is $[2,5)$. I hope it is correct."},
    {"problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "demonstration": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
                      "(2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."},
    {"problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how "
                "many times must Terrell lift them in order to lift the same total weight?",
     "demonstration": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ "
                      "pounds of weight. If he lifts two 15-pound weights instead for $n$ times, he will lift a "
                      "total of $2\\cdot15\\cdot n=30n$ pounds of weight. Equating this to 480 pounds, we can solve "
                      "for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
                      "\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct."},
    {"problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a "
                "solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "demonstration": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$"
                      "Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}="
                      "\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is "
                      "correct."},
]

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_problems(n: int, seed: int = 0, digits: int = 2, op: str = "+") -> list[dict]:
    """``n`` synthetic problems "What is a <op> b?" with ``digits``-digit operands drawn with ``seed``: a task
    easy enough for a 135M model to solve part of the time (math examples, graded by ``math_reward``)."""
    if op not in OPERATIONS:
        raise ValueError(f"arithmetic_problems: op {op!r} not in {sorted(OPERATIONS)}")
    if digits < 1:
        raise ValueError(f"arithmetic_problems: digits must be >= 1, got {digits}")
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    for i in range(n):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        c = OPERATIONS[op](a, b)
        out.append({"id": f"arithmetic{digits}{op}/{seed}/{i}", "task": "arithmetic", "problem": f"What is {a} {op} {b}?",
                    "answer": str(c), "solution": f"{a} {op} {b} = {c}."})
    return out


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def demonstration(example: dict, task: str) -> str:
    """The worked answer of a training example, in the format the prompts ask for: a math solution ending
    with the "Final Answer: ..." line (GSM8K's ``<<calculator>>`` annotations and ``#### n`` rewritten), or a
    program in a fenced block (MBPP's reference ``code``; HumanEval's prompt + canonical solution)."""
    if "demonstration" in example:
        return example["demonstration"]
    if task_kind(task) == "math":
        solution = _CALCULATOR.sub("", example["solution"]).split("####")[0].strip()
        return f"{solution}\nFinal Answer: The final answer is ${example['answer']}$. I hope it is correct."
    if "code" in example:
        return f"```python\n{example['code'].strip()}\n```"
    if "canonical_solution" in example:
        return f"```python\n{example['prompt']}{example['canonical_solution']}```"
    raise KeyError(f"demonstration: example {example.get('id')!r} has no solution/code to demonstrate")


def resolve_prompt(prompt: str | None, task: str) -> str:
    """A first-attempt template by name (a key of ``PROMPTS``), None for the task's default, or a literal
    template with a ``{problem}`` field (``{tests}``: MBPP's asserts, one per line)."""
    if prompt is None:
        if task not in DEFAULT_PROMPT:
            if task_kind(task) == "math":
                return PROMPTS["math"]
            raise ValueError(f"no default prompt for task {task!r}; pass a template")
        return PROMPTS[DEFAULT_PROMPT[task]]
    return named_template(prompt, PROMPTS, "problem")


def _fill(template: str, example: dict) -> str:
    tests = "\n".join(example.get("test_list") or [])
    if "{tests}" in template and not tests:
        raise ValueError(f"prompt template shows {{tests}} but example {example.get('id')!r} has no 'test_list'")
    return template.replace("{problem}", example["problem"].strip()).replace("{tests}", tests)


@dataclass
class ProblemFormat:
    """How a problem is shown at the first attempt: ``prompt`` (a ``PROMPTS`` name, a literal template, or
    None for the task's default), ``shots`` (demonstration examples: each a problem and its worked answer,
    given as earlier user/assistant turns of the chat, or as "template + answer" blocks in plain text) and
    ``chat`` (use the tokenizer's chat template when it has one)."""
    prompt: str | None = None
    shots: Sequence[dict] = field(default_factory=tuple)
    chat: bool = True

    def messages(self, example: dict, task: str) -> list[dict]:
        template = resolve_prompt(self.prompt, task)
        out = []
        for shot in self.shots:
            out += [{"role": "user", "content": _fill(template, shot)},
                    {"role": "assistant", "content": demonstration(shot, task)}]
        return out + [{"role": "user", "content": _fill(template, example)}]

    def render(self, tokenizer, example: dict, task: str) -> str:
        # Plain text: each turn separated by a blank line; the model continues after the last problem.
        messages = [{**m, "content": m["content"].rstrip()} for m in self.messages(example, task)]
        return render_messages(tokenizer, messages, None if self.chat else False, separator="\n\n")


def render_problem(tokenizer, example: dict, task: str | None = None, prompt: str | None = None,
                   shots: Sequence[dict] = (), chat: bool = True) -> str:
    """The first-attempt prompt text of one example (task defaults to ``example["task"]``)."""
    return ProblemFormat(prompt, shots, chat).render(tokenizer, example, task or example["task"])


# -- environments -------------------------------------------------------------------------------------------

def two_attempt_env(tokenizer, task: str, instruction: str | None = None, chat: bool = True) -> TwoAttemptEnv:
    """SCoRe's two-attempt environment for ``task``: the paper's instruction as a user turn of the chat
    template (plain ``\\n\\n{instruction}\\n\\n`` without one)."""
    instruction = INSTRUCTIONS[task_kind(task)] if instruction is None else instruction
    if chat and getattr(tokenizer, "chat_template", None):
        env = TwoAttemptEnv.for_chat(tokenizer, instruction)
    else:
        env = TwoAttemptEnv(instruction)
    env.attempt_turns = (0, 1)
    return env


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
