"""Tasks and their rewards: task data loaders (GSM8K, MATH, HumanEval, MBPP), the math grader, the code
sandbox and the QA rewards. Used by RL training (``rl``) and by evaluation alike; imports nothing from ``rl``."""
