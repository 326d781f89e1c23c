"""Batched LM scoring (generation.scoring) against a one-example-at-a-time loop on the same model and
triples: same numbers, speed-up measured in the same run.

    python bench/lm_scoring.py --n 32 --batch-size 8

Triples (gold passage, question, first gold answer) come from the NQ pool's dev split; the model is
SmolLM2-135M-Instruct (fp32) unless --model says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from retrieval.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from datamodules.qa import QADataModule  # noqa: E402
from generation.lm import load_causal_lm  # noqa: E402
from generation.prompts import PromptFormat  # noqa: E402
from generation.scoring import token_logprobs  # noqa: E402


@torch.inference_mode()
def loop_logprobs(model, tok, prompts, targets):
    """Reference: each (prompt, target) alone, no padding, log-softmax over the full logits."""
    out = []
    for p, t in zip(prompts, targets):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        t_ids = tok(t, add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + t_ids])).logits[0].float(), -1)
        out.append(logp[len(p_ids) - 1:len(p_ids) + len(t_ids) - 1].gather(-1, torch.tensor(t_ids)[:, None])[:, 0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    dm = QADataModule(test_file="data/nq_pool/dev.jsonl", limit=args.n)
    dm.setup()
    rows = dm.splits["test"]
    model, tok = load_causal_lm(args.model, device="cpu")
    model.eval()
    fmt = PromptFormat()
    prompts = [fmt.render(tok, r["question"], [dm.passages[r["gold_id"]]]) for r in rows]
    targets = [r["answers"][0] for r in rows]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"{len(rows)} triples, prompt tokens min/mean/max {min(lengths)}/{sum(lengths) / len(lengths):.0f}/{max(lengths)}, "
          f"threads {torch.get_num_threads()}")
    loop_logprobs(model, tok, prompts[:2], targets[:2])  # warm-up
    t0 = time.perf_counter()
    ref = loop_logprobs(model, tok, prompts, targets)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = token_logprobs(model, tok, prompts, targets, batch_size=args.batch_size, add_special_tokens=False)
    t_batched = time.perf_counter() - t0
    diff = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    print(f"loop (one at a time): {t_loop:.2f} s  ({len(rows) / t_loop:.2f} triples/s)")
    print(f"batched (bs={args.batch_size}, length-sorted, logits_to_keep): {t_batched:.2f} s  "
          f"({len(rows) / t_batched:.2f} triples/s)")
    print(f"speed-up: {t_loop / t_batched:.2f}x   max |difference| of token log-probs: {diff:.2e}")


if __name__ == "__main__":
    main()
