"""QueryEnhancedRetriever: HyDE and LameR (and the plain query, ``method="none"``) evaluated as retrieval
through the BEIR data module and the retrieval evaluator (nDCG@10, Recall@100, MRR@10), on SciFact or on
the NQ passage pool; with ``answers_file`` it also logs answer-recall@k (a retrieved passage contains a
gold answer). Evaluation only: run with ``test`` (the default for this module)."""

from __future__ import annotations

import lightning as L

from callbacks.retrieval_eval import RetrievalEvaluator
from generation.qa_metrics import answer_recall_at_k
from generation.rag import TextGenerator
from retrieval.query_enhancement import HyDE, LameR, hyde_search, lamer_search
from retrieval.search import retriever_from_settings
from retrieval.settings import BM25Settings, EncoderSettings
from training.models import load_causal_lm
from training.records import code_block, log_texts
from training.settings import LM, as_settings, save_settings

METHODS = ("none", "hyde", "lamer")


class QueryEnhancedRetriever(L.LightningModule):
    """Args:
        method: ``none`` (the query as is), ``hyde`` or ``lamer``.
        retriever: ``bm25`` or ``dense`` (HyDE needs ``dense``: it searches with embeddings).
        lm: the LM writing hypothetical documents (HyDE) or answer drafts (LameR).
        encoder / bm25: the dense retriever's encoder, BM25's parameters.
        hyde: HyDE's documents (number, length, temperature), prompt, and whether the query joins the mean.
        lamer: LameR's first-round passages shown to the LM, drafts (number, length) and prompt.
        answers_file: QA JSONL whose ``id`` match the query ids, to log answer-recall@k for ``recall_at``.
        gen_batch_size: prompts generated at once.
        eval_k: ranking depth kept for evaluation.
        num_examples: enhanced queries shown in TensorBoard's text tab.
    """

    evaluation_only = True

    def __init__(self, method: str = "hyde", retriever: str = "dense", lm: LM = LM(),
                 encoder: EncoderSettings = EncoderSettings(query_max_length=256),
                 bm25: BM25Settings = BM25Settings(), hyde: HyDE = HyDE(), lamer: LameR = LameR(),
                 answers_file: str | None = None, recall_at: tuple[int, ...] = (1, 5, 20), gen_batch_size: int = 8,
                 eval_k: int = 100, num_examples: int = 3, seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if method == "hyde" and retriever != "dense":
            raise ValueError("HyDE searches with the mean of passage-encoder embeddings: set retriever: dense")
        if retriever not in ("bm25", "dense"):
            raise ValueError(f"retriever must be 'bm25' or 'dense', got {retriever!r}")
        save_settings(self, ignore=())
        # the groups as given (under LightningCLI, hparams hold their config dicts instead)
        self.lm_settings, self.encoder, self.bm25 = as_settings(lm, LM), as_settings(encoder, EncoderSettings), \
            as_settings(bm25, BM25Settings)
        self.hyde, self.lamer = as_settings(hyde, HyDE), as_settings(lamer, LameR)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"ids": batch["ids"], "texts": batch["texts"]}

    validation_step = test_step

    def configure_optimizers(self):
        return None

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]

    def _generator(self, max_new_tokens: int, sample: bool) -> TextGenerator:
        lm = self.lm_settings
        model, tokenizer = load_causal_lm(lm.name_or_path, device=self.device, **lm.load_kwargs())
        return TextGenerator(model.eval(), tokenizer, max_new_tokens=max_new_tokens, batch_size=self.hparams.gen_batch_size,
                             do_sample=sample, temperature=self.hyde.temperature,
                             stop_strings=("\n\n",) if sample else ("\n",))

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        hp = self.hparams
        # 1. index the corpus (the evaluator hands over title + text as one string per passage)
        passages = dict(zip(corpus["ids"], corpus["texts"]))
        retriever = retriever_from_settings(hp.retriever, passages, encoder=self.encoder, bm25=self.bm25)
        texts = queries["texts"]
        # 2. search with the enhanced queries
        if hp.method == "hyde":
            ranking, docs = hyde_search(retriever, self._generator(self.hyde.doc_tokens, sample=True), texts, k,
                                        self.hyde.num_docs, self.hyde.prompt, self.hyde.include_query)
            shown = [f"{q}\n\n---\n\n" + "\n\n---\n\n".join(d) for q, d in zip(texts, docs)]
        elif hp.method == "lamer":
            ranking, shown = lamer_search(retriever, self._generator(self.lamer.draft_tokens, sample=False), texts, k,
                                          self.lamer.num_candidates, self.lamer.num_drafts, self.lamer.template)
        else:
            ranking, shown = retriever.search(texts, k), list(texts)
        run = {q: dict(hits) for q, hits in zip(queries["ids"], ranking)}
        # 3. answer recall of the rankings (QA pools)
        if hp.answers_file:
            self._log_answer_recall(run, passages, queries["ids"])
        self._log_examples(shown)
        return run

    def _log_answer_recall(self, run: dict, passages: dict, query_ids: list[str]) -> None:
        from datamodules.beir import resolve_data_dir
        from datamodules.qa import read_qa_jsonl

        answers = {r["id"]: r["answers"] for r in read_qa_jsonl(resolve_data_dir(self.hparams.answers_file))}
        missing = [q for q in query_ids if q not in answers]
        if missing:
            raise ValueError(f"{self.hparams.answers_file}: no answers for query ids {missing[:5]} "
                             f"({len(missing)} in all); it must list the test queries by id")
        retrieved = [[passages[d] for d in sorted(run[q], key=run[q].get, reverse=True)] for q in query_ids]
        gold = [answers[q] for q in query_ids]
        self.log_dict({f"test/answer_recall@{k}": answer_recall_at_k(retrieved, gold, k) for k in self.hparams.recall_at})

    def _log_examples(self, shown: list[str]) -> None:
        log_texts(self.logger, f"queries/{self.hparams.method}", [code_block(t) for t in shown[:self.hparams.num_examples]])
