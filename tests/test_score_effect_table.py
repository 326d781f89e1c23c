"""bench/score_effect_table.py: the SCoRe effect table's means and standard errors, by hand on four problems, and the
paired differences against the base model."""

import json

from bench.score_effect_table import write_table


def records(r1, r2, second):
    return [{"id": f"p{i}", "r1": a, "r2": b, "attempt_1": "ab", "attempt_2": s}
            for i, (a, b, s) in enumerate(zip(r1, r2, second))]


def test_table_standard_errors_and_paired_differences_by_hand(tmp_path):
    arms = {"base": records([1, 0, 1, 0], [0, 0, 1, 1], ["ab", "cd", "ab", "ab"]),
            "stage1": records([1, 1, 1, 0], [1, 1, 1, 1], ["ab", "ab", "ab", "ab"])}
    for arm, recs in arms.items():
        (tmp_path / f"{arm}.attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_table(tmp_path, ["base", "stage1", "stage1_2"], {"base": "base", "stage1": "S1", "stage1_2": "S12"})
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    # base: Acc 0.5 (sqrt(.25/4) = .25); Delta per problem [-1, 0, 0, 1]: 0 (sqrt(.5/4) = .354); i->c, c->i 0.25
    # (sqrt(.1875/4) = .217); edit distance [0, 1, 0, 0]: 0.25 (.217)
    assert rows["base"] == ["4", "0.500 (0.250)", "0.500 (0.250)", "0.000 (0.354)", "0.250 (0.217)", "0.250 (0.217)",
                            "0.250 (0.217) |"]
    assert rows["S12"][0] == "0"   # no records yet: pending
    paired = [line for line in text.splitlines() if line.startswith("| S1 |")][-1].split(" | ")[1:]
    # Acc@t1 [0, 1, 0, 0] -> +0.25 (.217); Acc@t2 [1, 1, 0, 0] -> +0.5 (.25); Delta [1, 0, 0, 0] -> +0.25 (.217)
    assert paired[:4] == ["4", "+0.250 (0.217)", "+0.500 (0.250)", "+0.250 (0.217)"]
    assert (tmp_path / "table.md").read_text() == text
