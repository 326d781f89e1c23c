"""Corpus encoding with the machine's precision vs sentence-transformers' default encode, in one run.

    python bench/precision_encode.py                      # 256 SciFact passages at 256 tokens, 3 rounds
    python bench/precision_encode.py --ndcg-docs 1000     # + nDCG@10 fp32 vs bf16 on a SciFact subset
    python bench/precision_encode.py --ndcg-docs 0 --rounds 5

Same model (all-MiniLM-L6-v2), same passages (the first ``--docs`` of the SciFact corpus, title + text),
same truncation, same batch size. Rounds alternate ours-auto, ours-fp32, ST, so a change in machine load
hits every side alike; the best rate of each side is kept. ``auto`` is bf16 autocast on a CPU with native
bf16 (AVX512-BF16/AMX) and fp32 elsewhere (training.precision.resolve_precision); ST encodes in fp32.

``--train-steps N``: a DPR training step (forward, InfoNCE over in-batch + hard negatives, backward, AdamW) on
the same SciFact batch with the encoder in fp32 and in the machine's precision, alternating, N timed steps each.

``--ndcg-docs N``: nDCG@10 on the 300 SciFact test claims over a corpus subset of N documents: every
document judged for a test claim plus the first others of the corpus, encoded once in fp32 and once in
bf16 (the full 5,183-document corpus takes ~10 minutes per precision on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from retrieval.beir import BeirDataset, passage_text  # noqa: E402
from retrieval.encoders import Encoder  # noqa: E402
from training.models import resolve_model_path  # noqa: E402
from training.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from retrieval.metrics import evaluate  # noqa: E402


def encoding(texts: list[str], batch: int, max_length: int, rounds: int) -> dict:
    from sentence_transformers import SentenceTransformer

    auto = Encoder("all-MiniLM-L6-v2", normalize=True, max_length=max_length, precision="auto")
    fp32 = Encoder("all-MiniLM-L6-v2", normalize=True, max_length=max_length, precision="fp32")
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    st.max_seq_length = max_length
    sides = {"ours (auto)": lambda: auto.encode(texts, batch_size=batch, show_progress=False),
             "ours (fp32)": lambda: fp32.encode(texts, batch_size=batch, show_progress=False),
             "sentence-transformers": lambda: torch.as_tensor(st.encode(texts, batch_size=batch))}
    # warm-up: oneDNN builds its bf16 kernels on first use
    auto.encode(texts[:batch], batch_size=batch, show_progress=False)
    fp32.encode(texts[:batch], batch_size=batch, show_progress=False)
    st.encode(texts[:batch], batch_size=batch)
    rates = {name: [] for name in sides}
    out = {}
    for _ in range(rounds):
        for name, run in sides.items():
            t = time.perf_counter()
            out[name] = run()
            rates[name].append(len(texts) / (time.perf_counter() - t))
    return {"rates": rates, "embeddings": out, "auto": resolve_precision("auto", "cpu")}


def train_step_rates(texts: list[str], queries: list[str], batch: int, max_length: int, steps: int) -> dict:
    """Seconds per DPR step (B queries, B positives + B hard negatives) in fp32 and in the auto precision."""
    from retrieval.losses import contrastive_loss

    precisions = {"fp32": "fp32", f"auto ({resolve_precision('auto', 'cpu')})": "auto"}
    encoders, optims = {}, {}
    for name, precision in precisions.items():
        torch.manual_seed(0)
        encoders[name] = Encoder("all-MiniLM-L6-v2", normalize=False, max_length=max_length, precision=precision)
        optims[name] = torch.optim.AdamW(encoders[name].parameters(), lr=2e-5)
    q = encoders["fp32"].tokenize(queries[:batch], 64)
    p = encoders["fp32"].tokenize(texts[:2 * batch], max_length)
    targets = torch.arange(batch)

    def step(name: str) -> float:
        enc, opt = encoders[name], optims[name]
        t = time.perf_counter()
        loss = contrastive_loss(enc(**q) @ enc(**p).T, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for name in precisions:  # warm-up (oneDNN kernels, optimizer state)
        step(name)
    seconds = {name: [] for name in precisions}
    for _ in range(steps):
        for name in precisions:
            seconds[name].append(step(name))
    return seconds


def ndcg_subset(n_docs: int, max_length: int, batch: int) -> dict[str, float]:
    data = BeirDataset.load("data/scifact", splits=("test",))
    qrels = data.qrels["test"]
    judged = sorted({d for docs in qrels.values() for d in docs})
    others = [d for d in data.corpus if d not in set(judged)]
    doc_ids = judged + others[: max(0, n_docs - len(judged))]
    passages = [passage_text(data.corpus[d]) for d in doc_ids]
    qids = sorted(qrels)
    queries = [data.queries[q] for q in qids]
    scores = {}
    for precision in ("fp32", "bf16"):
        enc = Encoder("all-MiniLM-L6-v2", normalize=True, max_length=max_length, precision=precision)
        t = time.perf_counter()
        p = enc.encode(passages, batch_size=batch, desc=f"corpus {precision}")
        q = enc.encode(queries, batch_size=batch, max_length=64, show_progress=False)
        seconds = time.perf_counter() - t
        top = (q @ p.T).topk(100, dim=1)
        run = {qid: {doc_ids[j]: s for s, j in zip(row_s.tolist(), row_j.tolist())}
               for qid, row_s, row_j in zip(qids, top.values, top.indices)}
        scores[precision] = (evaluate(run, qrels)["ndcg@10"], seconds)
    scores["docs"] = len(doc_ids)
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3, help="timed DPR steps per precision (0: skip)")
    p.add_argument("--train-batch", type=int, default=16, help="queries per DPR step (+ 2x passages)")
    p.add_argument("--ndcg-docs", type=int, default=0, help="corpus subset size for nDCG@10 fp32 vs bf16 (0: skip)")
    opts = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    corpus = BeirDataset.load("data/scifact", splits=()).corpus
    texts = [passage_text(doc) for doc in list(corpus.values())[: opts.docs]]
    result = encoding(texts, opts.batch, opts.max_length, opts.rounds)
    rates, emb = result["rates"], result["embeddings"]
    best = {name: max(r) for name, r in rates.items()}
    st_name = "sentence-transformers"
    print(f"\nall-MiniLM-L6-v2 encoding, {len(texts)} SciFact passages, {opts.max_length} tokens, batch {opts.batch}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_fast_bf16()}, auto = {result['auto']}")
    print("| encoder | passages/s (best of rounds) | every round | ratio to ST |\n|---|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {best[name]:.1f} | {', '.join(f'{x:.1f}' for x in r)} | {best[name] / best[st_name]:.2f} |")
    st = emb[st_name].float()
    for name in ("ours (auto)", "ours (fp32)"):
        cos = (emb[name] * torch.nn.functional.normalize(st, dim=-1)).sum(1)
        print(f"min cosine {name} vs ST: {cos.min().item():.6f}")
    if opts.train_steps:
        data = BeirDataset.load("data/scifact", splits=())
        queries = list(data.queries.values())
        secs = train_step_rates(texts, queries, opts.train_batch, opts.max_length, opts.train_steps)
        best = {name: min(v) for name, v in secs.items()}
        print(f"\nDPR training step, {opts.train_batch} queries x {2 * opts.train_batch} passages ({opts.max_length} "
              f"tokens), forward + backward + AdamW:")
        print("| precision | s/step (best) | every step |\n|---|---|---|")
        for name, v in secs.items():
            print(f"| {name} | {best[name]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
        fp32, auto = best["fp32"], [v for k, v in best.items() if k != "fp32"][0]
        print(f"speed-up of the machine's precision over fp32: {fp32 / auto:.2f}x")
    if opts.ndcg_docs:
        s = ndcg_subset(opts.ndcg_docs, opts.max_length, opts.batch)
        print(f"\nnDCG@10 on the 300 SciFact test claims over a {s['docs']}-document subset (all judged documents + "
              f"the first others):")
        for precision in ("fp32", "bf16"):
            print(f"| {precision} | nDCG@10 {s[precision][0]:.4f} | encode {s[precision][1]:.0f} s |")
        print(f"difference bf16 - fp32: {s['bf16'][0] - s['fp32'][0]:+.4f}")


if __name__ == "__main__":
    main()
