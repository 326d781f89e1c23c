"""Batched LM scoring (generation.scoring) on the same model and triples, three ways in one run:

    shared prefix   the prompts' common leading tokens (instruction, few-shot demonstrations) run once, their
                    KV cache copied across each batch, only the suffixes run (the default now)
    batched         today's batched scoring before the prefix cache: whole prompts, length-sorted batches
    loop            one triple at a time, unpadded (the reference for the numbers; --loop)

    python bench/lm_scoring.py --n 40 --batch-size 8                  # REPLUG LSR's few-shot prompt
    python bench/lm_scoring.py --n 40 --batch-size 8 --prompt zero_shot_chat

Triples (gold passage, question, first gold answer, after " " as LSR's target_prefix) come from the NQ pool's
dev split, passages cut to --passage-chars characters; the model is SmolLM2-135M-Instruct in the machine's
precision (training.precision.lm_autocast; --precision to force one). The CPU flags and the load average are
printed with the result: the ratios are from one run, on the machine as loaded as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from bench.machine import describe  # noqa: E402
from datamodules.qa import QADataModule  # noqa: E402
from training.models import load_causal_lm  # noqa: E402
from training.precision import lm_precision  # noqa: E402
from generation.prompts import prompt_format, uses_chat  # noqa: E402
from generation.scoring import encode_pairs, pair_logprobs, shared_prefix_length  # noqa: E402


@torch.inference_mode()
def loop_logprobs(model, pairs):
    """Reference: each (prompt, target) alone, no padding, log-softmax over the full logits."""
    out = []
    for p, t in pairs:
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + t])).logits[0].float(), -1)
        out.append(logp[len(p) - 1:len(p) + len(t) - 1].gather(-1, torch.tensor(t)[:, None])[:, 0])
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt", default="few_shot", help="a generation.prompts.PRESETS name")
    ap.add_argument("--passage-chars", type=int, default=400)
    ap.add_argument("--precision", default=None, help="auto, fp32 or bf16 (default: $RAGKIT_PRECISION or auto)")
    ap.add_argument("--loop", action="store_true", help="also score one at a time (the reference; slow)")
    args = ap.parse_args(argv)
    dm = QADataModule(test_file="data/nq_pool/dev.jsonl", limit=args.n)
    dm.setup()
    rows = dm.splits["test"]
    model, tok = load_causal_lm(args.model, device="cpu", precision=args.precision)
    model.eval()
    fmt = prompt_format(args.prompt)
    prompts = [fmt.render(tok, r["question"], [dm.passages[r["gold_id"]][:args.passage_chars]]) for r in rows]
    pairs = encode_pairs(tok, prompts, [" " + r["answers"][0] for r in rows],
                         add_special_tokens=not uses_chat(tok, fmt.chat))
    lengths = [len(p) + len(t) for p, t in pairs]
    print(describe())
    print(f"{len(pairs)} triples ({args.prompt}), tokens min/mean/max {min(lengths)}/{sum(lengths) / len(lengths):.0f}/"
          f"{max(lengths)}, shared prefix {shared_prefix_length(pairs)} tokens, batch {args.batch_size}, "
          f"precision {lm_precision(model)}, threads {torch.get_num_threads()}", flush=True)
    score = {"shared prefix": lambda: pair_logprobs(model, pairs, batch_size=args.batch_size, pad_id=tok.pad_token_id),
             "batched": lambda: pair_logprobs(model, pairs, batch_size=args.batch_size, pad_id=tok.pad_token_id,
                                              shared_prefix=False)}
    with torch.inference_mode():
        for fn in score.values():  # warm-up
            pair_logprobs(model, pairs[:2], batch_size=2, pad_id=tok.pad_token_id,
                          shared_prefix=fn is score["shared prefix"])
        results = {name: timed(fn) for name, fn in score.items()}
        if args.loop:
            results["loop"] = timed(lambda: loop_logprobs(model, pairs))
    ref = results["loop" if args.loop else "batched"][0]
    for name, (out, dt) in results.items():
        diff = max((a - b).abs().max().item() for a, b in zip(out, ref))
        print(f"{name:14s}: {dt:7.2f} s  {len(pairs) / dt:6.2f} triples/s  max |dlog p| vs "
              f"{'loop' if args.loop else 'batched'} {diff:.1e}")
    print(f"speed-up shared prefix / batched: {results['batched'][1] / results['shared prefix'][1]:.2f}x   "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
