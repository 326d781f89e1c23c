"""Deliberate one-line bugs in the mechanism behind the effects measured on the issue-25 testbeds
(docs/evidence/lsr_effect.md). Run: .venv/bin/python tests/mutation_check.py --area effects"""

M = "tests/test_lsr_mechanism.py"

MUTATIONS = [
    # the LM's preference read backwards: Q favours the passages that make the answer least likely
    {"name": "lsr_q_from_negated_logliks", "file": "retrieval/lsr.py",
     "old": "    log_q = torch.log_softmax(lm_logliks.detach().float().to(log_p_r.device) / beta, dim=-1)",
     "new": "    log_q = torch.log_softmax(-lm_logliks.detach().float().to(log_p_r.device) / beta, dim=-1)",
     "tests": [f"{M}::test_the_naacl_direction_makes_the_lm_preferred_fact_the_top_1"]},
]
