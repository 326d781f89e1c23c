"""Deliberate one-line bugs in the LM core (generation/tokens.py, generation/logprobs.py); each must make
the named tests fail. Run: .venv/bin/python tests/mutation_check.py --area lm_core"""

T = ["tests/test_lm_core.py"]

MUTATIONS = [
    {"name": "positions_from_columns", "file": "generation/logprobs.py",
     "old": "position_ids=position_ids(am), ", "new": "", "tests": T},
    {"name": "logprobs_ignore_temperature", "file": "generation/logprobs.py",
     "old": "        logits = logits / temperature\n    picked", "new": "        logits = logits\n    picked", "tests": T},
    {"name": "logits_shifted_by_one", "file": "generation/logprobs.py",
     "old": "logits = out.logits[:, -keep:-1]", "new": "logits = out.logits[:, -keep + 1:]", "tests": T},
    {"name": "entropy_at_temperature_one", "file": "generation/logprobs.py",
     "old": "entropy_from_logits(logits.float() / temperature)", "new": "entropy_from_logits(logits.float())",
     "tests": T},
    {"name": "nll_mean_of_row_means", "file": "generation/logprobs.py",
     "old": "    return -(lp * batch.loss_mask.to(lp.device, lp.dtype)).sum() / n.to(lp.device, lp.dtype)",
     "new": "    m = batch.loss_mask.to(lp.device, lp.dtype)\n    return -((lp * m).sum(1) / m.sum(1).clamp(min=1)).mean()",
     "tests": T},
    {"name": "left_pad_on_the_right", "file": "generation/tokens.py",
     "old": "                out[i, width - len(r):] = row", "new": "                out[i, :len(r)] = row", "tests": T},
    {"name": "turn_ids_count_every_segment", "file": "generation/tokens.py",
     "old": "                k += flag", "new": "                k += 1", "tests": T},
]
