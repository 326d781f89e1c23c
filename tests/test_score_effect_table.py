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


def test_training_diagnostics_per_step_from_every_events_file_of_a_resumed_run(tmp_path):
    import os

    from torch.utils.tensorboard import SummaryWriter

    from bench.score_effect_table import training_diagnostics

    run = tmp_path / "stage1" / "run"
    for k, (steps, share) in enumerate((((0, 1), (0.0, 0.25)), ((1, 2), (0.5, 1.0)))):   # resumed at step 1
        with SummaryWriter(str(run), filename_suffix=f".{k}") as w:
            for step, v in zip(steps, share):
                w.add_scalar("train/nonzero_advantage_share", v, step)
                w.add_scalar("train/kl_t1", v / 10, step)
        last = max(run.glob("events.out.tfevents.*"), key=lambda p: p.name.endswith(f".{k}"))
        os.utime(last, (1000 + k, 1000 + k))                    # the resumed file is the later one
    lines = training_diagnostics(tmp_path, ["base", "stage1"], {"base": "base", "stage1": "Stage I"})
    assert any("Training of Stage I" in line for line in lines)
    # step 1 from the later file (0.5, not 0.25): mean of 0, 0.5, 1
    assert "- share of groups with a nonzero advantage: mean 0.500 over 3 steps; 0.000 0.500 1.000" in lines
    assert "- KL to the reference, attempt 1: mean 0.050 over 3 steps; 0.000 0.050 0.100" in lines
    assert not any("sampled Acc@t2" in line for line in lines)   # not logged: not shown


def test_each_ablation_minus_stage_one_and_two_paired_by_hand(tmp_path):
    arms = {"base": records([0, 0, 0, 0], [0, 0, 0, 0], ["ab"] * 4),
            "stage1_2": records([0, 1, 0, 1], [1, 1, 0, 1], ["ab"] * 4),           # Delta [1, 0, 0, 0]
            "stage1_2_alpha0": records([0, 1, 1, 1], [0, 0, 1, 1], ["ab"] * 4)}    # Delta [0, -1, 0, 0]
    for arm, recs in arms.items():
        (tmp_path / f"{arm}.attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    names = {"base": "base", "stage1_2": "S12", "stage2_no_stage1": "noS1", "stage1_2_alpha0": "a0"}
    text = write_table(tmp_path, list(names), names)
    section = text.split("Each ablation minus Stage I + II")[1]
    row = [line for line in section.splitlines() if line.startswith("| a0 |")][0].split(" | ")[1:]
    # alpha 0 minus S12 per problem: Acc@t1 [0, 0, 1, 0] -> +0.25 (.217); Delta [-1, -1, 0, 0] -> -0.5 (.25)
    assert row[0] == "4" and row[1] == "+0.250 (0.217)" and row[3] == "-0.500 (0.250)"
    assert "| noS1 |" not in section   # no records: no row
