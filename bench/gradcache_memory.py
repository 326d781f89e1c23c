"""GradCache memory and speed: one contrastive training step (queries + positive passages, in-batch
negatives, AdamW) with all-MiniLM-L6-v2 at batch 32 without cache vs batch 256 with GradCache (chunks of
32), same model and sequence lengths. Each configuration runs in its own process, so the peak RSS
(ru_maxrss) is that step's alone; the model's and optimizer's memory are included in both.

    python bench/gradcache_memory.py --query-length 64 --passage-length 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)


def one_step(batch: int, chunk: int | None, query_length: int, passage_length: int, steps: int) -> dict:
    import torch

    from retrieval.beir import BeirDataset, passage_text
    from retrieval.encoders import Encoder
    from retrieval.gradcache import grad_cache
    from retrieval.losses import contrastive_loss, similarity

    torch.manual_seed(0)
    data = BeirDataset.load(ROOT / "data/scifact", splits=("train",))
    pairs = [(q, d) for q, docs in sorted(data.qrels["train"].items()) for d in docs][:batch]
    enc = Encoder("all-MiniLM-L6-v2", "mean", normalize=True, max_length=passage_length).train()
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-5)
    q_in = dict(enc.tokenize([data.queries[q] for q, _ in pairs], query_length))
    p_in = dict(enc.tokenize([passage_text(data.corpus[d]) for _, d in pairs], passage_length))
    loss_fn = lambda q, p: contrastive_loss(similarity(q, p), torch.arange(len(pairs)), 0.05)  # noqa: E731
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        if chunk is None:
            loss = loss_fn(enc(**q_in), enc(**p_in))
            loss.backward()
        else:
            loss = grad_cache([(lambda x: enc(**x), q_in), (lambda x: enc(**x), p_in)], loss_fn, chunk).loss
        opt.step()
        times.append(time.perf_counter() - start)
    return {"batch": len(pairs), "chunk": chunk, "loss": float(loss), "seconds": min(times),
            "samples_per_s": len(pairs) / min(times), "rss_before_step_mb": rss_before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "passage_tokens": p_in["input_ids"].shape[1], "query_tokens": q_in["input_ids"].shape[1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--query-length", type=int, default=64)
    ap.add_argument("--passage-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        batch, chunk = args.child
        print(json.dumps(one_step(batch, chunk or None, args.query_length, args.passage_length, args.steps)))
        return
    results = []
    for batch, chunk in ((32, 0), (256, 32)):
        out = subprocess.run([sys.executable, __file__, "--child", str(batch), str(chunk), "--query-length",
                              str(args.query_length), "--passage-length", str(args.passage_length),
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    small, big = results
    print(f"\nGradCache, all-MiniLM-L6-v2, query {small['query_tokens']} / passage {small['passage_tokens']} tokens, fp32 CPU")
    print(f"{'config':<28} {'peak RSS MB':>12} {'samples/s':>10} {'step s':>8}")
    for name, r in (("batch 32, no cache", small), ("batch 256, GradCache 32", big)):
        print(f"{name:<28} {r['peak_rss_mb']:>12.0f} {r['samples_per_s']:>10.2f} {r['seconds']:>8.1f}")
    print(f"memory ratio 256-cached / 32-plain: {big['peak_rss_mb'] / small['peak_rss_mb']:.3f} (target <= 1.2)")
    print(f"throughput ratio: {big['samples_per_s'] / small['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
