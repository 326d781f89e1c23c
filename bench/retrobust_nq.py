"""The RetRobust table on the NQ pool's test split (SmolLM2-135M-Instruct by default): rows = the base model,
the model trained on top-1 contexts only, the model trained on the mix (top-1 / low-rank / random);
columns = no retrieval, top-1, low-rank, random, NLI-filtered top-1; EM (F1).

Resumable: each training arm checkpoints every few steps and restarts from its last checkpoint; each table
row is cached as JSON once computed. Re-running the same command continues where it stopped.

    OMP_NUM_THREADS=1 python bench/retrobust_nq.py --n 100 --num-train 160   # ~1 h on one shared CPU thread

Training and evaluation are the library/module calls of ``python train.py --config configs/retrobust_nq.yaml``:
``datamodules.retrobust.RetRobustDataModule``, ``lightning_modules.retrobust.RetRobust`` (its
``answer_table``, i.e. ``generation.rag.read`` and ``generation.nli``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from datamodules.retrobust import RetRobustDataModule  # noqa: E402
from generation.qa_metrics import exact_match, f1_score  # noqa: E402
from lightning_modules.retrobust import RetRobust  # noqa: E402
from generation.settings import Generation, NLIFilter  # noqa: E402
from training.settings import LM  # noqa: E402

ARMS = {"top1_only": (1.0, 0.0, 0.0), "mix": (1 / 3, 1 / 3, 1 / 3)}
COLUMNS = [("closed_book", "no retrieval"), ("top1", "top-1"), ("low_rank", "low-rank"), ("random", "random"),
           ("nli_top1", "NLI-filtered top-1")]


def log(line: str, out) -> None:
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def make_module(args, evaluate_base: bool) -> RetRobust:
    lora = dict(r=args.r, alpha=args.alpha, dropout=args.dropout, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return RetRobust(LM(args.model, lora=lora, load_in_4bit=args.load_in_4bit), evaluate_base=evaluate_base,
                     optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=0.0), warmup=0.03,
                     micro_batch_size=args.batch_size, nli=NLIFilter(threshold=args.nli_threshold), nli_kinds=("top1",),
                     generation=Generation(max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size))

def make_data(args, proportions) -> RetRobustDataModule:
    return RetRobustDataModule(tokenizer=args.model, num_train=args.num_train, limit_val=None, limit_test=args.n,
                               proportions=proportions, batch_size=args.batch_size, eval_batch_size=args.gen_batch_size,
                               val_file=None, seed=args.seed)


def row_settings(args) -> dict:
    """What a cached row or trained arm depends on: reusing one computed otherwise is an error."""
    keys = ("model", "n", "num_train", "epochs", "batch_size", "lr", "r", "alpha", "dropout", "load_in_4bit",
            "nli_threshold", "max_new_tokens", "seed")
    return {k: getattr(args, k) for k in keys}


def train_arm(args, name: str, out) -> Path:
    """Fit one arm (resuming from its last checkpoint) and return the folder of its adapters."""
    arm_dir = Path(args.out) / name
    adapter = arm_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        info = json.loads((arm_dir / "train_info.json").read_text())
        if info.setdefault("settings", row_settings(args)) != row_settings(args):  # (first runs recorded none)
            raise ValueError(f"{adapter} was trained with {info.get('settings')}, not {row_settings(args)}: use "
                             "another --out (or delete it)")
        log(f"[{name}] trained adapters found in {adapter}; not training again", out)
        return adapter
    L.seed_everything(args.seed, verbose=False)
    dm, module = make_data(args, ARMS[name]), make_module(args, evaluate_base=False)
    ckpt = ModelCheckpoint(dirpath=arm_dir / "checkpoints", save_last=True, every_n_train_steps=args.ckpt_every,
                           save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=args.epochs,
                        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[ckpt],
                        logger=CSVLogger(arm_dir, name="logs"), enable_progress_bar=False, enable_model_summary=False)
    last = arm_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    seconds = time.perf_counter() - start
    kinds = {k: sum(e["kind"] == k for e in dm.examples["train"]) for k in ("top1", "low_rank", "random")}
    module.lm.save_pretrained(adapter)
    tokens = sum(sum(len(s) for s, _ in e["segments"]) for e in dm.examples["train"]) * args.epochs
    info = {"arm": name, "examples": len(dm.examples["train"]), "kinds": kinds, "epochs": args.epochs,
            "steps": trainer.global_step, "seconds_this_run": round(seconds, 1),
            "train_loss_last": float(trainer.callback_metrics.get("train/loss", float("nan"))), "tokens": tokens,
            "settings": row_settings(args)}
    (arm_dir / "train_info.json").write_text(json.dumps(info, indent=1))
    log(f"[{name}] trained: {info}", out)
    return adapter


def evaluate_row(args, row: str, adapter: Path | None, out) -> dict:
    """EM/F1 per column for one row (cached in <out>/rows/<row>.json)."""
    cache = Path(args.out) / "rows" / f"{row}.json"
    if cache.is_file():
        result = json.loads(cache.read_text())
        if result.setdefault("settings", row_settings(args)) != row_settings(args):  # (first runs recorded none)
            raise ValueError(f"{cache} was computed with {result.get('settings')}, not {row_settings(args)}: "
                             "use another --out (or delete it)")
        log(f"[{row}] cached row: {result['means']}", out)
        return result
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    dm = make_data(args, ARMS["mix"])
    dm.setup("test")
    module = make_module(args, evaluate_base=True)
    module.configure_model()
    if adapter is not None:
        set_peft_model_state_dict(module.lm, load_file(str(adapter / "adapter_model.safetensors")))
    module.setup_judge()
    module.lm.eval()
    scores: dict[str, list[float]] = {}
    predictions = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            with module.adapters("base" if adapter is None else "trained"):
                answers = module.answer_table(batch["questions"], batch["contexts"], dm.prompt_format)
            for column, preds in answers.items():
                scores.setdefault(f"{column}/em", []).extend(exact_match(p, g) for p, g in zip(preds, batch["answers"]))
                scores.setdefault(f"{column}/f1", []).extend(f1_score(p, g) for p, g in zip(preds, batch["answers"]))
            for i, q in enumerate(batch["questions"]):
                predictions.append({"id": batch["ids"][i], "question": q, "answers": batch["answers"][i],
                                    **{c: answers[c][i] for c in answers}})
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    result = {"row": row, "questions": len(predictions), "seconds": round(time.perf_counter() - start, 1),
              "means": means, "settings": row_settings(args)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    (cache.parent / f"{row}_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    cache.write_text(json.dumps(result, indent=1))
    log(f"[{row}] {result['questions']} questions in {result['seconds']} s: {means}", out)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=100, help="first N questions of the test split")
    parser.add_argument("--num-train", type=int, default=160, help="training questions (seeded sample of train)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--nli-threshold", type=float, default=0.2085,
                        help="LM judge threshold (dev-calibrated for SmolLM2 in configs/nli_filter_nq.yaml)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--gen-batch-size", type=int, default=8)
    parser.add_argument("--ckpt-every", type=int, default=4, help="optimizer steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_retrobust_nq")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "retrobust_nq.log", "a", encoding="utf-8") as out:
        log(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {vars(args)} torch threads {torch.get_num_threads()}", out)
        rows = {"base": evaluate_row(args, "base", None, out)}
        for arm in ARMS:
            rows[f"trained ({arm})"] = evaluate_row(args, arm, train_arm(args, arm, out), out)
        lines = [f"| model | {' | '.join(label for _, label in COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
        for name, r in rows.items():
            m = r["means"]
            lines.append(f"| {name} | " + " | ".join(f"{m[f'{c}/em']:.3f} ({m[f'{c}/f1']:.3f})" for c, _ in COLUMNS) + " |")
        table = "\n".join(lines)
        log(f"\nEM (F1) on the first {args.n} test questions of data/nq_pool:\n{table}", out)
        (Path(args.out) / "retrobust_nq.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
