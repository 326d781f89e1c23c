"""Throughput of our DPR training and corpus encoding vs sentence-transformers, in one run.

    python bench/throughput_st.py                    # defaults: batch 32, 1 hard negative, 128 tokens, 6 steps
    python bench/throughput_st.py --steps 10 --max-length 256

Same model (all-MiniLM-L6-v2), same data (SciFact training claims with the same BM25 hard negatives),
same batch, same truncation, same loss (softmax over in-batch + hard negatives, cosine / temperature
0.05 = MultipleNegativesRankingLoss with scale 20), fp32 on CPU:
- training samples/s: our ContrastiveRetriever under a Lightning Trainer vs SentenceTransformerTrainer;
  the first step of each is a warm-up and is not timed;
- encoding passages/s: our Encoder.encode vs SentenceTransformer.encode on the same passages.
Prints both and the ratios ours / theirs (higher is better for us).
"""

from __future__ import annotations

import argparse
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

import lightning as L  # noqa: E402
import torch  # noqa: E402

from datamodules.beir import BEIRDataModule  # noqa: E402
from lightning_modules.contrastive_retriever import ContrastiveRetriever  # noqa: E402
from retrieval.settings import EncoderSettings  # noqa: E402
from training.models import resolve_model_path  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def triples(dm: BEIRDataModule, n: int) -> list[dict]:
    """The first ``n`` training items as (query, positive, negative) texts, drawn once and shared."""
    ds = dm._build_train_dataset()
    out = []
    for i in range(n):
        item = ds[i]
        out.append({"anchor": item["query"], "positive": dm.passages[item["positive_id"]],
                    "negative": dm.passages[item["negative_ids"][0]]})
    return out


def ours_training(data: list[dict], batch: int, max_length: int, steps: int) -> float:
    class Fixed(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    def collate(items):
        return {"queries": [x["anchor"] for x in items],
                "passages": [x["positive"] for x in items] + [x["negative"] for x in items]}

    model = ContrastiveRetriever(EncoderSettings(query_max_length=max_length, passage_max_length=max_length), warmup=0)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    loader = torch.utils.data.DataLoader(Fixed(), batch_size=batch, collate_fn=collate)
    trainer.fit(model, loader)
    return batch * (len(timer.times) - 1) / sum(timer.times[1:])


def st_training(data: list[dict], batch: int, max_length: int, steps: int) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *args, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, *args, **kw):
            self.times.append(time.perf_counter() - self._t)

    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = max_length
    args = SentenceTransformerTrainingArguments(
        output_dir="/tmp/st_bench", per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5,
        warmup_steps=0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        dataloader_drop_last=True, seed=0)
    timer = Timer()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(data),
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[timer])
    trainer.train()
    return batch * (len(timer.times) - 1) / sum(timer.times[1:])


def encoding(texts: list[str], batch: int, max_length: int, repeats: int) -> tuple[float, float, float]:
    """Best passages/s of each side over ``repeats`` alternating rounds (ours, ST, ours, ST, ...), so a
    change in machine load hits both sides alike."""
    from sentence_transformers import SentenceTransformer

    module = ContrastiveRetriever(EncoderSettings(passage_max_length=max_length))
    module.configure_model()  # encoders are built there (idempotent), not in __init__
    ours = module.passage_encoder
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    st.max_seq_length = max_length
    ours.encode(texts[:batch], batch_size=batch, show_progress=False)  # warm-up
    st.encode(texts[:batch], batch_size=batch)
    ours_rate = st_rate = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a = ours.encode(texts, batch_size=batch, show_progress=False)
        ours_rate = max(ours_rate, len(texts) / (time.perf_counter() - t))
        t = time.perf_counter()
        b = st.encode(texts, batch_size=batch, convert_to_tensor=True)
        st_rate = max(st_rate, len(texts) / (time.perf_counter() - t))
    return ours_rate, st_rate, (a - b.cpu()).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--encode-docs", type=int, default=512)
    p.add_argument("--encode-max-length", type=int, default=256)
    p.add_argument("--encode-repeats", type=int, default=3)
    p.add_argument("--skip-training", action="store_true", help="measure encoding only")
    opts = p.parse_args()
    torch.manual_seed(0)

    dm = BEIRDataModule(data_dir="data/scifact", num_negatives=1)
    dm.setup("fit")
    if not opts.skip_training:
        data = triples(dm, opts.batch * opts.steps)
        ours_train = ours_training(data, opts.batch, opts.max_length, opts.steps)
        st_train = st_training(data, opts.batch, opts.max_length, opts.steps)
    texts = [dm.passages[d] for d in dm.doc_ids[: opts.encode_docs]]
    ours_enc, st_enc, diff = encoding(texts, 64, opts.encode_max_length, opts.encode_repeats)

    print(f"\nThroughput on {torch.get_num_threads()} CPU threads, all-MiniLM-L6-v2, fp32")
    print(f"| measure | ours | sentence-transformers | ratio (ours/ST) |\n|---|---|---|---|")
    if not opts.skip_training:
        print(f"| training samples/s (batch {opts.batch}, 1 hard neg, {opts.max_length} tok, {opts.steps - 1} timed steps) "
              f"| {ours_train:.2f} | {st_train:.2f} | {ours_train / st_train:.2f} |")
    print(f"| encoding passages/s ({len(texts)} SciFact passages, {opts.encode_max_length} tok, batch 64, "
          f"best of {opts.encode_repeats} alternating rounds) "
          f"| {ours_enc:.1f} | {st_enc:.1f} | {ours_enc / st_enc:.2f} |")
    print(f"max |ours - ST| over the encoded embeddings: {diff:.2e}")


if __name__ == "__main__":
    main()
