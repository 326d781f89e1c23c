"""RetRobust on a testbed where context can help or mislead (issue 25; testbed and predictions in
docs/evidence/effects_preregistration.md): SmolLM2-135M-Instruct with LoRA on ``data/arith_wrong`` (addition
questions; BM25 contexts: top-1 = the question's own fact, low-rank (ranks 3-8) = a note stating a wrong sum for
the same operands, random = another question's fact; the prompt's demonstrations read a passage), trained on
the top-1 context only and on the paper's mix (a third each), both against the base model; EM on all 300 test
questions closed-book and with each kind of context. ``--data data/arith_facts --low-rank 11 20`` is the first
design (whose criterion failed).

Resumable: each phase writes ``<out>/<phase>.json`` and is skipped when it exists; fits checkpoint every
``--ckpt-every`` steps and resume from ``last.ckpt``.

    OMP_NUM_THREADS=1 nohup python bench/retrobust_effect.py > runs/retrobust_effect.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lsr_learning import run_phase  # noqa: E402  (sets the offline env, the path and the cwd)
from lsr_effect import checkpoint_config, se  # noqa: E402

import torch  # noqa: E402

from train import cli_main  # noqa: E402

MIXES = {"top1_only": [1.0, 0.0, 0.0], "mix": [1 / 3, 1 / 3, 1 / 3]}
CONTEXTS = ("closed_book", "top1", "low_rank", "random")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/retrobust_effect")
    ap.add_argument("--data", default="data/arith_wrong")
    ap.add_argument("--prompt", default="configs/prompts/arith_read.yaml", help="a PromptFormat file")
    ap.add_argument("--low-rank", type=int, nargs=2, default=[3, 8], help="ranks a low-rank context is drawn from")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", type=int, default=640, help="training questions (one epoch)")
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    base = ["--config", "configs/retrobust_nq.yaml", "--data.init_args.corpus", str(data),
            *[a for s in ("train", "val", "test") for a in (f"--data.init_args.{s}_file",
                                                             str(data / f"{'dev' if s == 'val' else s}.jsonl"))],
            "--data.init_args.num_train", str(args.train), "--data.init_args.limit_test", str(args.test),
            "--data.init_args.prompt", args.prompt, "--data.init_args.low_rank_range", json.dumps(args.low_rank),
            "--model.init_args.nli_kinds", "[]",
            "--model.init_args.evaluate_base", "false", "--model.init_args.generation.max_new_tokens", "8",
            "--model.init_args.optimizer.init_args.lr", str(args.lr), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out / "tb")]

    def table(cli) -> dict:
        return {c: float(cli.trainer.callback_metrics[f"test/trained/{c}/em"]) for c in CONTEXTS}

    rows = {"base": run_phase(out, "base", lambda: table(cli_main(["test", *base])))}
    for name in args.mixes:
        ckpt_dir = out / name / "checkpoints"
        callbacks = checkpoint_config(out, name, ckpt_dir, args.ckpt_every)
        fit_args = [*base, "--config", str(callbacks), "--data.init_args.proportions", json.dumps(MIXES[name]),
                    "--trainer.logger.init_args.name", name]

        def fit(fit_args=fit_args, ckpt_dir=ckpt_dir):
            last, done = ckpt_dir / "last.ckpt", ckpt_dir / "fit.done"
            if not done.exists():  # a cut-off fit resumes from its last checkpoint
                cli_main(["fit", *fit_args, *(["--ckpt_path", str(last)] if last.exists() else [])])
                done.write_text("")
            cli = cli_main(["test", *fit_args, "--ckpt_path", str(last)])  # the final weights
            step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
            return {**table(cli), "global_step": step}

        rows[name] = run_phase(out, f"{name}_fit", fit)

    n = args.test
    print(f"\nRetRobust on {data}: EM on {n} test questions, each cell value (standard error); trained on "
          f"{args.train} questions, one epoch, lr {args.lr}")
    print("| model | " + " | ".join(CONTEXTS) + " |")
    print("|---" * (len(CONTEXTS) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f} ({se(r[c], n):.3f})" for c in CONTEXTS) + " |")


if __name__ == "__main__":
    main()
