"""Retrieval-augmented inference with SmolLM2-135M-Instruct on the NQ pool's test split: one table from one
run (EM, F1, answer-recall of the passages, wall time per row), then HyDE and LameR as retrieval
against the plain query, on the pool and on SciFact. Rows are printed as they finish, so a run cut
short still reports what it did.

    python bench/rag_nq.py --n 24 --qe-n 24            # sized for a shared 2-core CPU
    python bench/rag_nq.py --n 300 --qe-n 300 --scifact-dense   # the whole test split (GPU)

Every row goes through the same library calls as ``python train.py --config configs/<method>_nq.yaml``
(generation.rag.answer_questions, retrieval.search, retrieval.query_enhancement).
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

from datamodules.qa import QADataModule  # noqa: E402
from training.models import load_causal_lm  # noqa: E402
import random  # noqa: E402

from generation.nli import LMJudge, nli_hypothesis  # noqa: E402
from generation.prompts import PRESETS, prompt_format  # noqa: E402
from generation.qa_metrics import answer_recall_at_k, exact_match, f1_score, has_answer  # noqa: E402
from generation.rag import TextGenerator, answer_questions  # noqa: E402
from retrieval.beir import BeirDataset, passage_text  # noqa: E402
from retrieval.encoders import Encoder  # noqa: E402
from retrieval.metrics import evaluate  # noqa: E402
from retrieval.query_enhancement import HYDE_TEMPLATES, hyde_search, lamer_search  # noqa: E402
from retrieval.search import Retriever, make_retriever  # noqa: E402

ROWS = [  # name, method, retriever, k
    ("closed-book", "closed_book", None, 0),
    ("BM25 top-1", "read", "bm25", 1),
    ("random passage", "read", "random", 1),
    ("NLI filter, BM25 top-1", "nli_filter", "bm25", 1),
    ("NLI filter, random", "nli_filter", "random", 1),
    ("BM25 top-5", "read", "bm25", 5),
    ("REPLUG, BM25 top-5", "replug", "bm25", 5),
    ("recitation", "recitation", None, 0),
    ("dense top-5", "read", "dense", 5),
]


def log(line: str, out) -> None:
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def qa_table(args, model, tok, dm, retrievers, out) -> None:
    rows = dm.splits["test"]
    questions, gold = [r["question"] for r in rows], [r["answers"] for r in rows]
    fmt = prompt_format(args.prompt)
    judge = LMJudge(model, tok, batch_size=args.batch_size)
    if args.judge_calibration:  # threshold from DEV questions: gold passage (supports) vs a random one (does not)
        dev = [json.loads(line) for line in open(ROOT / "data/nq_pool/dev.jsonl")][:args.judge_calibration]
        rng = random.Random(0)
        t0 = time.perf_counter()
        threshold = judge.calibrate([dm.passages[r["gold_id"]] for r in dev],
                                    [dm.passages[rng.choice(dm.doc_ids)] for _ in dev],
                                    [nli_hypothesis(r["question"], r["answers"][0]) for r in dev])
        log(f"(LM judge threshold {threshold:.4f}, calibrated on {len(dev)} dev questions' gold vs random passages "
            f"in {time.perf_counter() - t0:.0f} s; uncalibrated 0.5)", out)
    log(f"\n## QA on the NQ pool test split: first {len(rows)} questions, {args.model} fp32, greedy, "
        f"{args.max_new_tokens} new tokens, prompt {args.prompt!r}, prompts in batches of {args.batch_size}\n", out)
    log("| row | EM | F1 | answer in passages | NLI kept | seconds |", out)
    log("|---|---|---|---|---|---|", out)
    for index, (name, method, kind, k) in enumerate(ROWS):
        if (kind == "dense" and args.skip_dense) or (args.rows and index not in args.rows):
            continue
        t0 = time.perf_counter()
        passages, scores = [[] for _ in rows], [[] for _ in rows]
        if kind:
            engine = retrievers(kind)
            t0 = time.perf_counter()
            hits = engine.retrieve(questions, k)
            passages = [[p.contents for p in h] for h in hits]
            scores = [[p.score for p in h] for h in hits]
        ans = answer_questions(method, model, tok, questions, passages, scores, prompt_format=fmt, judge=judge,
                               max_new_tokens=args.max_new_tokens, recitation_tokens=args.recitation_tokens,
                               batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        em = sum(exact_match(a, g) for a, g in zip(ans.answers, gold)) / len(rows)
        f1 = sum(f1_score(a, g) for a, g in zip(ans.answers, gold)) / len(rows)
        recall = (f"{sum(any(has_answer(p, g) for p in ps) for ps, g in zip(passages, gold)) / len(rows):.3f}"
                  if kind else "-")
        kept = f"{sum(ans.extra['entailed']) / len(rows):.3f}" if "entailed" in ans.extra else "-"
        log(f"| {name} | {em:.3f} | {f1:.3f} | {recall} | {kept} | {seconds:.0f} |", out)
        with open(args.out_dir / "rag_nq_predictions.jsonl", "a", encoding="utf-8") as f:
            for q, g, a, gen in zip(questions, gold, ans.answers, ans.generations):
                f.write(json.dumps({"row": name, "question": q, "answers": g, "prediction": a, "generation": gen}) + "\n")


def retrieval_rows(label: str, ids, texts, queries: dict, qrels, answers, gen_hyde, gen_lamer, encoder, args, out,
                   template: str, engines: dict | None = None) -> None:
    qids = list(queries)
    qtexts = [queries[q] for q in qids]
    passages = dict(zip(ids, texts))
    log(f"\n## Retrieval, {label}: {len(qids)} queries\n", out)
    if engines is None:
        engines = {"BM25": make_retriever("bm25", passages)}
        if encoder is not None:
            t0 = time.perf_counter()
            engines["dense"] = make_retriever("dense", passages, encoder=encoder)
            log(f"(dense index: {len(ids)} passages encoded in {time.perf_counter() - t0:.0f} s)\n", out)
    cols = "| retrieval | nDCG@10 | Recall@20 |" + (" answer-recall@1 | @5 | @20 |" if answers else "") + " seconds |"
    log(cols, out)
    log("|---" * (cols.count("|") - 1) + "|", out)
    runs = []
    for name, engine in engines.items():
        runs.append((name, lambda e=engine: e.search(qtexts, 100)))
        runs.append((f"LameR + {name}", lambda e=engine: lamer_search(e, gen_lamer, qtexts, 100, args.lamer_candidates,
                                                                         1)[0]))
        if name == "dense":
            runs.append(("HyDE + dense", lambda e=engine: hyde_search(e, gen_hyde, qtexts, 100, args.hyde_docs,
                                                                      template)[0]))
    for name, fn in runs:
        t0 = time.perf_counter()
        ranking = fn()
        seconds = time.perf_counter() - t0
        run = {q: dict(h) for q, h in zip(qids, ranking)}
        m = evaluate(run, qrels, ndcg_at=(10,), recall_at=(20,), mrr_at=(10,))
        line = f"| {name} | {m['ndcg@10']:.3f} | {m['recall@20']:.3f} |"
        if answers:
            retrieved = [[passages[d] for d, _ in h] for h in ranking]
            gold = [answers[q] for q in qids]
            line += "".join(f" {answer_recall_at_k(retrieved, gold, k):.3f} |" for k in (1, 5, 20))
        log(line + f" {seconds:.0f} |", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="QA test questions (first n of data/nq_pool/test.jsonl)")
    ap.add_argument("--qe-n", type=int, default=24, help="queries for HyDE/LameR (first n of each test set)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--prompt", default="few_shot", choices=sorted(PRESETS), help="generation.prompts preset")
    ap.add_argument("--judge-calibration", type=int, default=48,
                    help="dev questions to calibrate the LM judge's threshold on (0: keep 0.5)")
    ap.add_argument("--recitation-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoder-max-length", type=int, default=128)
    ap.add_argument("--hyde-docs", type=int, default=2)
    ap.add_argument("--hyde-tokens", type=int, default=64)
    ap.add_argument("--lamer-candidates", type=int, default=3)
    ap.add_argument("--skip-dense", action="store_true", help="no dense rows (encoding the pool is the slow part)")
    ap.add_argument("--rows", type=int, nargs="*", help="only these rows of the QA table (0-based indices of ROWS)")
    ap.add_argument("--skip-qa", action="store_true")
    ap.add_argument("--skip-qe", action="store_true")
    ap.add_argument("--scifact-dense", action="store_true", help="also encode SciFact's 5,183 abstracts (HyDE there)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench_rag_nq")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "rag_nq_predictions.jsonl").unlink(missing_ok=True)
    torch.manual_seed(0)
    out = open(args.out_dir / "rag_nq.md", "w", encoding="utf-8")
    log(f"# bench/rag_nq.py {' '.join(sys.argv[1:])}  (torch threads {torch.get_num_threads()})", out)
    t_all = time.perf_counter()
    model, tok = load_causal_lm(args.model, device="cpu")
    model.eval()
    dm = QADataModule(test_file="data/nq_pool/test.jsonl", corpus="data/nq_pool", limit=args.n)
    dm.setup()
    cache: dict[str, Retriever] = {}
    encoder = None if args.skip_dense else Encoder(args.encoder, normalize=True, max_length=args.encoder_max_length)

    def retrievers(kind: str) -> Retriever:
        if kind not in cache:
            t0 = time.perf_counter()
            cache[kind] = make_retriever(kind, dm.corpus, encoder=encoder if kind == "dense" else None)
            if kind == "dense":
                log(f"(dense index: {len(dm.doc_ids)} pool passages encoded in {time.perf_counter() - t0:.0f} s, "
                    f"not counted in the row's time)", out)
        return cache[kind]

    if not args.skip_qa:
        qa_table(args, model, tok, dm, retrievers, out)
    if not args.skip_qe:
        gen_hyde = TextGenerator(model, tok, max_new_tokens=args.hyde_tokens, do_sample=True, temperature=0.7,
                                 stop_strings=("\n\n",), batch_size=args.batch_size)
        gen_lamer = TextGenerator(model, tok, max_new_tokens=args.max_new_tokens, stop_strings=("\n",),
                                  batch_size=args.batch_size)
        test = [json.loads(line) for line in open(ROOT / "data/nq_pool/test.jsonl")][:args.qe_n]
        retrieval_rows("NQ pool (2,600 passages), gold passage as qrel", dm.doc_ids,
                       [dm.passages[p] for p in dm.doc_ids], {r["id"]: r["question"] for r in test},
                       {r["id"]: {r["gold_id"]: 1} for r in test}, {r["id"]: r["answers"] for r in test},
                       gen_hyde, gen_lamer, encoder, args, out, HYDE_TEMPLATES["web"],
                       engines={"BM25": retrievers("bm25"), **({} if encoder is None else {"dense": retrievers("dense")})})
        sci = BeirDataset.load(ROOT / "data/scifact", splits=("test",))
        qids = sorted(sci.qrels["test"])[:args.qe_n]
        ids = list(sci.corpus)
        retrieval_rows("SciFact test (5,183 abstracts)", ids, [passage_text(sci.corpus[d]) for d in ids],
                       {q: sci.queries[q] for q in qids}, {q: sci.qrels["test"][q] for q in qids}, None,
                       gen_hyde, gen_lamer, encoder if args.scifact_dense else None, args, out,
                       HYDE_TEMPLATES["scifact"])
    log(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s", out)


if __name__ == "__main__":
    main()
