"""Mutations that the toy-scale guard of SCoRe's Stage I mechanism (tests/test_score_mechanism.py) must catch on its
own: beta2 not reaching attempt 1, in the library or in the module's wiring."""

T = ["tests/test_score_mechanism.py"]

MUTATIONS = [
    {"name": "mechanism_beta2_on_attempt_2", "file": "rl/score.py",
     "old": "        return [beta2, beta1]", "new": "        return [beta1, beta2]", "tests": T},
    {"name": "mechanism_module_swaps_the_betas", "file": "lightning_modules/score.py",
     "old": "turn_kl_coefs(stage, objective.beta1, objective.beta2)",
     "new": "turn_kl_coefs(stage, objective.beta2, objective.beta1)", "tests": T},
]
