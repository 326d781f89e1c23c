"""SCoRe's effect on the issue-25 testbed (configs/families/score_easyarith_cpu.yaml; predictions:
docs/evidence/effects_preregistration.md; results: docs/evidence/score_effect.md).

  criterion  before any training: the base model's SAMPLED attempt-1 / attempt-2 accuracy on training problems
             (N problems x G, temperature and G of the config) and the share of problem groups with a nonzero
             advantage that implies, per objective, from real rollouts (SCoRe.sample: rl.rollout in the two-attempt
             environment, the task's reward, rl.score's returns and RLOO baselines):
                 .venv/bin/python bench/score_effect.py criterion --problems 64
  run        every arm through train.py (checkpoints; a finished arm is skipped, a stopped one resumes from its
             last.ckpt), each evaluated greedily on the 300 held-out problems with two attempts (SCoRe's test loop,
             rl.self_correction.evaluate_two_attempts), the table with standard errors rewritten after each:
                 nohup nice -n 19 .venv/bin/python bench/score_effect.py run > runs/score_effect.log 2>&1 &
  all        criterion of the designs of docs/evidence/score_effect.md in their order (A: temperature 1.0, B: 0.7,
             C: 0.4; D: 1.0 and E: 0.7 with two-attempt demonstrations) until one passes (Stage I's share of
             groups with a nonzero advantage >= 1/3), then ``run`` with
             it (its temperature for every arm; <out>/design.json says which); resumable like the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = "configs/score_stage1_easyarith.yaml"


def build(config: str, overrides: list[str]):
    """The SCoRe module and DataModule of ``config`` as train.py builds them, the policy loaded, set up for fit."""
    from train import cli_main

    cli = cli_main(["--config", config, "--trainer.logger", "false", *overrides], run=False)
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    model.setup("fit", dm)   # what SCoRe.setup takes from the DataModule: task, problem format, reward
    model.configure_model()
    model.policy.eval()
    return model, dm


def criterion(args) -> float:
    """The criterion's samples (cached per chunk) and summary; returns Stage I's share (attempt 2's groups)."""
    import torch

    from rl.advantages import nonzero_group_share
    from rl.score import attempt_rewards, turn_advantages, turn_returns

    torch.manual_seed(args.seed)
    model, dm = build(args.config, args.overrides)
    G, s = model.sampling.group_size, model.sampling
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "criterion_samples.jsonl"
    done = [json.loads(x) for x in cache.read_text().splitlines()] if cache.exists() else []
    rows = dm.rows["train"][:args.problems]
    print(f"{len(rows)} training problems x G={G}, temperature {s.temperature}, {s.max_turn_tokens} tokens an attempt, "
          f"{torch.get_num_threads()} thread(s); {len(done) // G} problems cached", flush=True)
    for start in range(len(done) // G, len(rows), args.chunk):
        batch = rows[start:start + args.chunk]
        examples = [ex for ex in batch for _ in range(G)]          # the G samples of a problem contiguous
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            r = model.sample([model.format.render(model.tokenizer, ex, model.task) for ex in examples])
        r1, r2 = attempt_rewards(model.reward_fn, r.turn_texts, examples, 2)
        with open(cache, "a", encoding="utf-8") as f:
            for ex, turns, a, b in zip(examples, r.turn_texts, r1.tolist(), r2.tolist()):
                f.write(json.dumps({"id": ex["id"], "problem": ex["problem"], "answer": ex["answer"], "turns": turns,
                                    "r1": a, "r2": b}) + "\n")
                done.append({"r1": a, "r2": b})
        print(f"  {len(done) // G}/{len(rows)} problems ({time.perf_counter() - t0:.0f} s, "
              f"{time.process_time() - c0:.0f} s of CPU for {len(examples)} "
              f"rollouts; sampled acc t1 {r1.mean():.3f}, t2 {r2.mean():.3f})", flush=True)
    r1 = torch.tensor([d["r1"] for d in done])
    r2 = torch.tensor([d["r2"] for d in done])
    n = len(r1)
    lines = [f"{n // G} training problems x G = {G} samples, temperature {s.temperature}, {s.max_turn_tokens} tokens an "
             f"attempt (config {args.config} {' '.join(args.overrides)})",
             f"sampled Acc@t1 {r1.mean():.3f} (se {(r1.mean() * (1 - r1.mean()) / n).sqrt():.3f}), "
             f"Acc@t2 {r2.mean():.3f} (se {(r2.mean() * (1 - r2.mean()) / n).sqrt():.3f}) over {n} samples"]
    for p, name in ((r1.mean(), "t1"), (r2.mean(), "t2")):
        lines.append(f"if every problem had p = {p:.3f} at {name}: share 1 - p^G - (1-p)^G = "
                     f"{1 - p ** G - (1 - p) ** G:.3f}")
    per_problem = r2.view(-1, G).mean(dim=1)
    lines.append("problems by sampled attempt-2 successes out of G: "
                 + ", ".join(f"{k}: {int((per_problem * G).round().eq(k).sum())}" for k in range(G + 1)))
    overall_shares = {}
    for stage, alpha in (("I", 10.0), ("II", 10.0), ("II", 0.0), ("single_turn", 10.0)):
        rets = turn_returns(r1, None if stage == "single_turn" else r2, stage, alpha)
        shares = nonzero_group_share(turn_advantages(rets, G, "rloo"), G)
        overall = nonzero_group_share(turn_advantages(rets, G, "rloo").abs().amax(dim=1), G)
        overall_shares[f"{stage} alpha {alpha:g}"] = float(overall)
        lines.append(f"nonzero_advantage_share, stage {stage} alpha {alpha:g}: {float(overall):.3f} "
                     f"(per attempt: {', '.join(f'{float(x):.3f}' for x in shares)})")
    (out / "criterion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return overall_shares["I alpha 10"]

# arm -> (config, init_from arm or None, steps key); Stage II's arms start from Stage I's best checkpoint
ARMS = {"base": ("configs/score_stage1_easyarith.yaml", None, None),
        "stage1": ("configs/score_stage1_easyarith.yaml", None, "s1"),
        "stage1_2": ("configs/score_stage2_easyarith.yaml", "stage1", "s2"),
        "single_turn": ("configs/score_single_turn_easyarith.yaml", None, "s1+s2"),
        "stage2_no_stage1": ("configs/score_stage2_no_stage1_easyarith.yaml", None, "s2"),
        "stage1_2_alpha0": ("configs/score_stage2_alpha0_easyarith.yaml", "stage1", "s2")}
NAMES = {"base": "base model", "stage1": "Stage I", "stage1_2": "Stage I + II", "single_turn": "single-turn RL",
         "stage2_no_stage1": "ablation: Stage II without Stage I", "stage1_2_alpha0": "ablation: Stage I + II, alpha 0"}


def fit(args, arm: str, out: Path) -> str:
    """train.py fit of ``arm`` (resumed from its last.ckpt when stopped); its best checkpoint by training reward."""
    from train import cli_main

    done = out / f"{arm}.fit.json"
    if done.exists():
        return json.loads(done.read_text())["best"]
    config, init, steps = ARMS[arm]
    n = {"s1": args.stage1_steps, "s2": args.stage2_steps, "s1+s2": args.stage1_steps + args.stage2_steps}[steps]
    last = out / arm / "run" / "checkpoints" / "last.ckpt"   # a fixed version folder: a restart finds it
    argv = ["fit", "--config", config, *args.overrides, "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.logger.init_args.name", arm, "--trainer.logger.init_args.version", "run", "--trainer.max_steps",
            str(n), "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--data.init_args.batch_size", str(args.problems_per_step)]
    argv += ["--model.init_args.init_from", fit(args, init, out)] if init else []
    argv += ["--ckpt_path", str(last)] if last.exists() else []
    print("$ train.py " + " ".join(argv), flush=True)
    start, cpu = time.time(), time.process_time()
    cli = cli_main(argv)
    best = cli.trainer.checkpoint_callback.best_model_path or str(last)
    done.write_text(json.dumps({"best": best, "steps": n, "seconds": time.time() - start,
                                "cpu_seconds": time.process_time() - cpu}))
    return best


def evaluate(args, arm: str, out: Path, ckpt: str | None) -> None:
    """Greedy two attempts on the held-out problems with the arm's policy (SCoRe's test loop: rl.self_correction.
    evaluate_two_attempts with the module's environment, format, reward and budgets), records cached per batch."""
    from bench.self_correct_table import run_batches
    from rl.policy import load_policy_weights
    from rl.self_correction import evaluate_two_attempts

    path = out / f"{arm}.attempts.jsonl"
    # a Stage II config names Stage I's checkpoint as init_from: point it at this arm's own (loaded below anyway)
    model, dm = build(ARMS[arm][0], [*args.overrides, *(["--model.init_args.init_from", ckpt] if ARMS[arm][1] else [])])
    if ckpt:
        load_policy_weights(model.policy, ckpt)
    s = model.sampling
    rows = dm.rows["test"]

    def two(batch):
        return evaluate_two_attempts(model.policy, model.tokenizer, batch, model.task, env=model.eval_env(),
                                     problem_format=model.format, greedy=True,
                                     max_turn_tokens=s.eval_max_turn_tokens or s.max_turn_tokens,
                                     max_response_tokens=model.response_budget(), batch_size=len(batch),
                                     reward=model.reward_fn, with_metrics=False)["records"]

    run_batches(path, rows, args.eval_batch_size, two)


def run(args) -> None:
    from bench.score_effect_table import write_table

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    design = out / "design.json"   # written by `all`: a second process (other arms) trains with the same design
    if design.exists() and "--model.init_args.sampling.temperature" not in args.overrides:
        d = json.loads(design.read_text())
        args.overrides += ["--model.init_args.sampling.temperature", str(d["temperature"]), *d.get("overrides", [])]
    for arm in args.arms:
        ckpt = fit(args, arm, out) if ARMS[arm][2] else None
        evaluate(args, arm, out, ckpt)
        print(write_table(out, list(ARMS), NAMES), flush=True)


# The designs of docs/evidence/score_effect.md, in order (each written before it ran): the first whose base-model
# share of groups with a nonzero attempt-2 advantage is at least a third is the one trained. A-C failed; D and E
# show the demonstrations as whole two-attempt exchanges (data.init_args.shot_attempts 2).
TWO_ATTEMPT_SHOTS = ["--data.init_args.shot_attempts", "2"]
DESIGNS = {"A": (1.0, []), "B": (0.7, []), "C": (0.4, []), "D": (1.0, TWO_ATTEMPT_SHOTS), "E": (0.7, TWO_ATTEMPT_SHOTS)}


def all_designs(args) -> None:
    """criterion of each design of ``--designs`` in turn until one passes, then ``run`` with it."""
    overrides, out = list(args.overrides), args.out
    for name in args.designs:
        temperature, extra = DESIGNS[name]
        args.overrides = [*overrides, "--model.init_args.sampling.temperature", str(temperature), *extra]
        args.out = f"{out}_criterion_{name}"
        share = criterion(args)
        print(f"design {name} (temperature {temperature}): nonzero-advantage share {share:.3f} "
              f"({'passes' if share >= 1 / 3 else 'fails'} the criterion, at least 1/3)", flush=True)
        if share >= 1 / 3:
            args.out = out
            (ROOT / out).mkdir(parents=True, exist_ok=True)
            (ROOT / out / "design.json").write_text(json.dumps({"design": name, "temperature": temperature,
                                                                "overrides": extra, "criterion_share": share}))
            return run(args)
    print("no design passes the criterion: no training (docs/evidence/score_effect.md)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("criterion", "run", "all"))
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--out", default="runs/score_effect")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS),
                    help="all: the designs to check, in this order")
    ap.add_argument("--problems", type=int, default=64, help="criterion: training problems (x G samples)")
    ap.add_argument("--chunk", type=int, default=4, help="criterion: problems a rollout batch")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                    help="run: these arms, in this order (Stage II's arms fit Stage I first when it is not done)")
    ap.add_argument("--stage1-steps", type=int, default=20)
    ap.add_argument("--stage2-steps", type=int, default=20)
    ap.add_argument("--problems-per-step", type=int, default=2, help="run: problems a step (x G samples)")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    args, args.overrides = ap.parse_known_args()   # the rest: train.py options for every arm (--model.init_args...)
    import torch

    torch.set_num_threads(args.threads)
    {"criterion": criterion, "run": run, "all": all_designs}[args.mode](args)


if __name__ == "__main__":
    main()
