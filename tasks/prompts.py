"""The texts of self-correction tasks: first-attempt prompts, few-shot demonstrations, SCoRe's fixed
self-correction instructions (Kumar et al. 2024, appendix, verbatim) and the Self-Refine ones (Madaan et al.
2023), by task kind (``math``: a worked solution ending in a "Final Answer: ..." line; ``code``: a program in a
fenced block). A task (``tasks.registry.Task``) names its first-attempt template and may bring its own
instruction; these are the defaults.
"""

from __future__ import annotations

import re

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


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def demonstration(example: dict, kind: str) -> str:
    """The worked answer of a training example, in the format the prompts ask for: a math solution ending
    with the "Final Answer: ..." line (GSM8K's ``<<calculator>>`` annotations and ``#### n`` rewritten), or a
    program in a fenced block (MBPP's reference ``code``; HumanEval's prompt + canonical solution). An example
    with a ``demonstration`` field brings its own."""
    if "demonstration" in example:
        return example["demonstration"]
    if kind == "math":
        solution = _CALCULATOR.sub("", example["solution"]).split("####")[0].strip()
        return f"{solution}\nFinal Answer: The final answer is ${example['answer']}$. I hope it is correct."
    if "code" in example:
        return f"```python\n{example['code'].strip()}\n```"
    if "canonical_solution" in example:
        return f"```python\n{example['prompt']}{example['canonical_solution']}```"
    raise KeyError(f"demonstration: example {example.get('id')!r} has no solution/code to demonstrate")


def fill(template: str, example: dict) -> str:
    """``template`` with ``{problem}`` (the example's problem) and ``{tests}`` (MBPP's asserts, one per line)."""
    tests = "\n".join(example.get("test_list") or [])
    if "{tests}" in template and not tests:
        raise ValueError(f"prompt template shows {{tests}} but example {example.get('id')!r} has no 'test_list'")
    return template.replace("{problem}", example["problem"].strip()).replace("{tests}", tests)
