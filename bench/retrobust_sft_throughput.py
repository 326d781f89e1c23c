"""RetRobust fine-tuning speed and memory: our LightningModule vs TRL's ``SFTTrainer`` on the same model, LoRA
settings, data (the same RetRobust examples, pre-tokenized, in the same order, so every step sees the same
batch), batch size and activation (gradient) checkpointing, which TRL's ``SFTConfig`` turns on by default (it
trades memory for a second forward pass): the pair is run with it off and on; then QLoRA vs LoRA vs full
fine-tuning memory with our module (checkpointing off).

Each contender runs in its own process (peak RSS = ``ru_maxrss`` of that process, so none inherits another's
high-water mark), after ``--warmup`` untimed steps; tokens/s counts the real (non-padding) tokens of the
timed steps. Contenders alternate over ``--rounds`` and the median is reported.

    OMP_NUM_THREADS=1 python bench/retrobust_sft_throughput.py --steps 3 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def examples(args):
    """The RetRobust training examples (mixed contexts, seeded) and the order our sampler visits them in."""
    from datamodules.retrobust import RetRobustDataModule

    dm = RetRobustDataModule(tokenizer=args.model, num_train=args.batch_size * (args.warmup + args.steps),
                             val_file=None, batch_size=args.batch_size, seed=args.seed)
    dm.setup("fit")
    order = list(iter(dm.train_dataloader().sampler))
    return dm, order


def batch_tokens(dm, order, batch_size) -> list[int]:
    rows = [dm.examples["train"][i] for i in order]
    return [sum(sum(len(s) for s, _ in e["segments"]) for e in rows[b:b + batch_size])
            for b in range(0, len(rows), batch_size)]


class StepTimer:
    """Wall time of each optimizer step (forward, backward, step)."""

    def __init__(self):
        self.times, self._t = [], None

    def begin(self):
        self._t = time.perf_counter()

    def end(self):
        self.times.append(time.perf_counter() - self._t)


def run_ours(args, mode: str, checkpointing: bool) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lightning_modules.retrobust import RetRobust
    from training.settings import LM

    dm, order = examples(args)
    lora = None if mode == "full" else dict(r=args.r, alpha=args.alpha, dropout=args.dropout, target_modules=TARGETS)
    module = RetRobust(LM(args.model, lora=lora, load_in_4bit=mode == "qlora", gradient_checkpointing=checkpointing),
                       evaluate_base=False, optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=0.0),
                       warmup=0.03, micro_batch_size=args.batch_size)
    module.configure_model()
    loaded = rss_mb()
    timer = StepTimer()

    class Timing(Callback):
        def on_train_batch_start(self, *a):
            timer.begin()

        def on_train_batch_end(self, *a):
            timer.end()

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=args.warmup + args.steps,
                        gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timing()])
    trainer.fit(module, datamodule=dm)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"times": timer.times, "tokens": batch_tokens(dm, order, args.batch_size), "loaded_mb": loaded,
            "peak_mb": peak_mb(), "trainable": trainable}


def run_trl(args, checkpointing: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.models import load_causal_lm

    dm, order = examples(args)
    rows = [dm.examples["train"][i] for i in order]
    data = Dataset.from_list([{"input_ids": e["segments"][0][0] + e["segments"][1][0],
                               "completion_mask": [0] * len(e["segments"][0][0]) + [1] * len(e["segments"][1][0])}
                              for e in rows])
    model, tok = load_causal_lm(args.model, device="cpu")
    tok.padding_side = "right"
    loaded = rss_mb()
    timer = StepTimer()

    class Timing(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.begin()

        def on_step_end(self, *a, **k):
            timer.end()

    class InOrder(SFTTrainer):  # the same batches as ours: no reshuffling
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    config = SFTConfig(output_dir=str(Path(args.out) / "trl"), per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=args.lr,
                       lr_scheduler_type="linear", warmup_steps=0.03, weight_decay=0.0, max_grad_norm=1.0,
                       optim="adamw_torch", gradient_checkpointing=checkpointing,
                       gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                       bf16=False, fp16=False, completion_only_loss=True, max_length=None, dataloader_num_workers=0,
                       seed=args.seed, disable_tqdm=True)
    peft_config = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=TARGETS,
                             task_type="CAUSAL_LM")
    trainer = InOrder(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=peft_config,
                      callbacks=[Timing()])
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"times": timer.times, "tokens": batch_tokens(dm, list(range(len(rows))), args.batch_size),
            "loaded_mb": loaded, "peak_mb": peak_mb(), "trainable": trainable}


def worker(args) -> None:
    torch.manual_seed(args.seed)
    kind, _, gc = args.worker.partition("+")
    out = run_trl(args, gc == "gc") if kind == "trl" else run_ours(args, kind, gc == "gc")
    print("RESULT " + json.dumps(out), flush=True)


def summarize(name: str, results: list[dict], warmup: int) -> dict:
    speeds = []
    for r in results:
        times, tokens = r["times"][warmup:], r["tokens"][warmup:len(r["times"])]
        speeds.append(sum(tokens) / sum(times))
    return {"name": name, "tokens_per_s": statistics.median(speeds), "all_tokens_per_s": speeds,
            "peak_mb": statistics.median(r["peak_mb"] for r in results),
            "loaded_mb": statistics.median(r["loaded_mb"] for r in results), "trainable": results[0]["trainable"],
            "step_s": statistics.median(t for r in results for t in r["times"][warmup:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of ours / TRL")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory-modes", action="store_true", help="skip the QLoRA and full fine-tuning runs")
    parser.add_argument("--out", default="runs/bench_retrobust_sft")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="activation checkpointing for the ours-vs-TRL pair (TRL's default is on)")
    parser.add_argument("--worker", choices=["lora", "qlora", "full", "trl", "lora+gc", "trl+gc"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]

    def spawn(kind: str) -> dict:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--worker", kind], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"worker {kind} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"  {kind}: done in {time.perf_counter() - start:.0f} s", flush=True)
        return json.loads(lines[-1][len("RESULT "):])

    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"model {args.model}, batch {args.batch_size}, {args.warmup} + {args.steps} steps, LoRA r {args.r} on q/k/v/o",
          flush=True)
    settings = {"off": [""], "on": ["+gc"], "both": ["", "+gc"]}[args.checkpointing]
    runs: dict[str, list[dict]] = {f"{k}{gc}": [] for gc in settings for k in ("lora", "trl")}
    for _ in range(args.rounds):
        for kind in runs:
            runs[kind].append(spawn(kind))
    if not args.no_memory_modes:
        for kind in ("qlora", "full"):
            runs[kind] = [spawn(kind)]
    table = {k: summarize(k, v, args.warmup) for k, v in runs.items()}
    names = {"lora": "ours, LoRA", "trl": "TRL SFTTrainer, LoRA", "lora+gc": "ours, LoRA, checkpointing",
             "trl+gc": "TRL SFTTrainer, LoRA, checkpointing (TRL's default)", "qlora": "ours, QLoRA (nf4)",
             "full": "ours, full FT"}
    lines = ["| run | tokens/s | s/step | peak RSS MB | RSS after load MB | trainable params |", "|---|---|---|---|---|---|"]
    for k, s in table.items():
        lines.append(f"| {names[k]} | {s['tokens_per_s']:.1f} | {s['step_s']:.1f} | {s['peak_mb']:.0f} | "
                     f"{s['loaded_mb']:.0f} | {s['trainable']:,} |")
    text = "\n".join(lines) + "\n"
    for gc in settings:
        ours, trl = table[f"lora{gc}"], table[f"trl{gc}"]
        text += (f"\nours / TRL, checkpointing {'on' if gc else 'off'}: tokens/s "
                 f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, peak RSS {ours['peak_mb'] / trl['peak_mb']:.2f}x "
                 f"(target >= 1.0x tokens/s, <= 1.0x memory)")
    text += "\n"
    print(text, flush=True)
    (Path(args.out) / "retrobust_sft_throughput.md").write_text(text)
    (Path(args.out) / "retrobust_sft_throughput.json").write_text(json.dumps({"args": vars(args), "runs": runs,
                                                                              "summary": table}, indent=1))


if __name__ == "__main__":
    main()
