"""The table of bench/score_effect.py from the per-problem records of each arm (<out>/<arm>.attempts.jsonl): Acc@t1,
Acc@t2, Delta, Delta_i->c, Delta_c->i (rl.self_correction.attempt_metrics) and the edit distance between the attempts
(rl.score.edit_distance_ratio), each with its standard error; then each arm minus the base model, paired over the same
problems (the standard error of the per-problem difference). A difference under 2 standard errors is no difference.
Then each trained arm's training diagnostics, per step, from its TensorBoard events (<out>/<arm>/run): the share of
RLOO groups with a nonzero advantage, the sampled Acc@t1 / Acc@t2 and each attempt's KL to the reference.

    .venv/bin/python bench/score_effect_table.py runs/score_effect
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLUMNS = ("Acc@t1", "Acc@t2", "Delta", "i->c", "c->i", "edit distance")


def per_problem(records: list[dict]) -> dict[str, list[float]]:
    """Each column's per-problem value: its mean over the problems is the metric (Delta = mean of r2 - r1)."""
    from rl.score import edit_distance_ratio

    r1, r2 = [r["r1"] for r in records], [r["r2"] for r in records]
    return {"Acc@t1": r1, "Acc@t2": r2, "Delta": [b - a for a, b in zip(r1, r2)],
            "i->c": [float(a == 0 and b == 1) for a, b in zip(r1, r2)],
            "c->i": [float(a == 1 and b == 0) for a, b in zip(r1, r2)],
            "edit distance": edit_distance_ratio([r["attempt_1"] for r in records], [r["attempt_2"] for r in records])}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error sqrt(var / n) (var over the n values; for 0/1 values sqrt(p (1 - p) / n))."""
    n = len(xs)
    m = sum(xs) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / n / n)


def load(out: Path, arm: str) -> dict[str, dict] | None:
    path = out / f"{arm}.attempts.jsonl"
    if not path.exists():
        return None
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


ABLATIONS = ("stage2_no_stage1", "stage1_2_alpha0")


def paired(recs: dict, ref: str, arms: list[str], names: dict[str, str], title: str) -> list[str]:
    """Rows of each arm of ``arms`` minus ``ref``, over the problems both have: the mean of the per-problem
    differences and its standard error. Nothing until ``ref`` and an arm have records."""
    if not recs.get(ref) or not any(recs.get(a) for a in arms):
        return []
    lines = ["", title, "", "| policy | n | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for arm in arms:
        r = recs.get(arm)
        if not r:
            continue
        ids = [i for i in r if i in recs[ref]]
        mine, theirs = per_problem([r[i] for i in ids]), per_problem([recs[ref][i] for i in ids])
        diffs = {c: [a - b for a, b in zip(mine[c], theirs[c])] for c in COLUMNS}
        lines.append(f"| {names[arm]} | {len(ids)} | " + " | ".join("%+.3f (%.3f)" % mean_se(diffs[c]) for c in COLUMNS)
                     + " |")
    return lines


def write_table(out: Path, arms: list[str], names: dict[str, str]) -> str:
    from rl.self_correction import attempt_metrics

    recs = {arm: load(out, arm) for arm in arms}
    n_test = max((len(r) for r in recs.values() if r), default=0)
    lines = [f"Greedy two-attempt evaluation on the held-out problems (mean (standard error)); {n_test} problems "
             "when complete.", "", "| policy | n | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for arm in arms:
        r = recs[arm]
        if not r:
            lines.append(f"| {names[arm]} | 0 | " + " | ".join("(pending)" for _ in COLUMNS) + " |")
            continue
        rows = list(r.values())
        metrics = attempt_metrics([x["r1"] for x in rows], [x["r2"] for x in rows])   # the shipped definitions
        values = per_problem(rows)
        assert abs(sum(values["Delta"]) / len(rows) - metrics["delta(t1,t2)"]) < 1e-9
        lines.append(f"| {names[arm]} | {len(rows)} | " + " | ".join("%.3f (%.3f)" % mean_se(values[c]) for c in COLUMNS)
                     + " |")
    lines += paired(recs, "base", [a for a in arms if a != "base"], names,
                    "Each arm minus the base model, paired over the problems both have (difference (standard error)):")
    lines += paired(recs, "stage1_2", [a for a in ABLATIONS if a in arms], names,
                    "Each ablation minus Stage I + II (prediction 4: both Deltas lower), paired the same way:")
    lines += training_diagnostics(out, arms, names)
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


DIAGNOSTICS = {"nonzero_advantage_share": "share of groups with a nonzero advantage", "acc_t1": "sampled Acc@t1",
               "acc_t2": "sampled Acc@t2", "kl_t1": "KL to the reference, attempt 1", "kl_t2": "KL, attempt 2"}


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """``train/<name>`` of DIAGNOSTICS by step, over every events file of a run (a resumed run writes one more;
    the later file wins a step both have)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for name in DIAGNOSTICS:
            if f"train/{name}" in acc.Tags()["scalars"]:
                found.setdefault(name, {}).update({e.step: e.value for e in acc.Scalars(f"train/{name}")})
    return found


def training_diagnostics(out: Path, arms: list[str], names: dict[str, str]) -> list[str]:
    lines = []
    for arm in arms:
        found = scalars(out / arm / "run") if (out / arm / "run").is_dir() else {}
        if not found:
            continue
        lines += ["", f"Training of {names[arm]}, per logged step (TensorBoard, {out / arm / 'run'}):", ""]
        for name, label in DIAGNOSTICS.items():
            if name in found:
                steps = [found[name][k] for k in sorted(found[name])]
                lines.append(f"- {label}: mean {sum(steps) / len(steps):.3f} over {len(steps)} steps; "
                             + " ".join(f"{v:.3f}" for v in steps))
    return lines


if __name__ == "__main__":
    from bench.score_effect import ARMS, NAMES

    print(write_table(Path(sys.argv[1]), list(ARMS), NAMES))
