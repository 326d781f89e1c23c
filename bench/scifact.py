"""The SciFact demo: BM25 vs zero-shot all-MiniLM-L6-v2 vs DPR fine-tuned from it, in one run.

    python bench/scifact.py            # what `make demo` runs (~25 min on 2 CPU cores)
    python bench/scifact.py --extra --trainer.max_epochs 1    # extra overrides go to every DPR run

Each row goes through the same CLI as a user would (train.py): BM25 is tested, MiniLM is tested
before training, then DPR is fit on the 809 training claims and its checkpoint tested on the 300 test
claims. Prints one table (nDCG@10, Recall@100, MRR@10, wall time) and writes it to
runs/scifact_demo/table.{md,json}. TensorBoard: `tensorboard --logdir runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from train import cli_main  # noqa: E402

METRICS = ("ndcg@10", "recall@100", "mrr@10")


def run(name: str, args: list[str]) -> dict:
    print(f"\n=== {name}: python train.py {' '.join(args)}", flush=True)
    start = time.perf_counter()
    cli = cli_main(args)
    seconds = time.perf_counter() - start
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    return {"system": name, **{m: metrics[m] for m in METRICS}, "seconds": seconds, "log_dir": cli.trainer.log_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/dpr_scifact.yaml")
    parser.add_argument("--bm25-config", default="configs/bm25_scifact.yaml")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="overrides for the DPR runs")
    opts = parser.parse_args()

    start = time.perf_counter()
    rows = [
        run("BM25 (bm25s, k1=0.9, b=0.4)", ["--config", opts.bm25_config]),
        run("all-MiniLM-L6-v2 zero-shot", ["test", "--config", opts.config, *opts.extra,
                                           "--trainer.logger.init_args.name", "minilm_zeroshot_scifact"]),
        run("DPR fine-tuned from MiniLM", ["--config", opts.config, *opts.extra]),
    ]
    total = time.perf_counter() - start

    header = "| system | nDCG@10 | Recall@100 | MRR@10 | wall time |\n|---|---|---|---|---|\n"
    lines = "".join(f"| {r['system']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | "
                    f"{r['seconds'] / 60:.1f} min |\n" for r in rows)
    table = f"SciFact test (300 queries, 5,183 documents)\n\n{header}{lines}\nTotal wall time: {total / 60:.1f} min\n"
    out = ROOT / "runs" / "scifact_demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "table.json").write_text(json.dumps({"rows": rows, "total_seconds": total}, indent=2) + "\n")
    print("\n" + table)
    print(f"Written to {out}/table.md; TensorBoard: tensorboard --logdir runs")


if __name__ == "__main__":
    main()
