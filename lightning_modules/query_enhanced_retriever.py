"""QueryEnhancedRetriever: HyDE and LameR (and the plain query, ``method="none"``) evaluated as retrieval
through the BEIR data module and the retrieval evaluator (nDCG@10, Recall@100, MRR@10), on SciFact or on
the NQ passage pool; with ``answers_file`` it also logs answer-recall@k (a retrieved passage contains a
gold answer). Evaluation only: run with ``test`` (the default for this module)."""

from __future__ import annotations

import lightning as L

from callbacks.retrieval_eval import RetrievalEvaluator
from training.models import DEFAULT_GENERATOR, load_causal_lm
from generation.qa_metrics import answer_recall_at_k
from generation.rag import TextGenerator
from retrieval.encoders import DEFAULT_ENCODER
from retrieval.query_enhancement import HYDE_TEMPLATES, LAMER_TEMPLATE, hyde_search, lamer_search
from retrieval.search import make_retriever

METHODS = ("none", "hyde", "lamer")


class QueryEnhancedRetriever(L.LightningModule):
    """Args:
        method: ``none`` (the query as is), ``hyde`` or ``lamer``.
        retriever: ``bm25`` or ``dense`` (HyDE needs ``dense``: it searches with embeddings).
        generator: the LM writing hypothetical documents (HyDE) or answer drafts (LameR).
        num_docs, doc_tokens, temperature, hyde_template, include_query: HyDE's K sampled documents of at
            most ``doc_tokens`` tokens, the prompt (a key of ``HYDE_TEMPLATES`` or a template with ``{query}``)
            and whether the query's embedding joins the mean (as in the original code).
        num_candidates, num_drafts, draft_tokens: LameR's first-round passages shown to the LM and drafts.
        answers_file: QA JSONL whose ``id`` match the query ids, to log answer-recall@k for ``recall_at``.
        eval_k: ranking depth kept for evaluation.
    """

    evaluation_only = True

    def __init__(self, method: str = "hyde", retriever: str = "dense", generator: str = DEFAULT_GENERATOR,
                 encoder: str = DEFAULT_ENCODER, encoder_max_length: int = 256, num_docs: int = 4, doc_tokens: int = 128,
                 temperature: float = 0.7, hyde_template: str = "web", include_query: bool = True,
                 num_candidates: int = 5, num_drafts: int = 1, draft_tokens: int = 32, lamer_template: str = LAMER_TEMPLATE,
                 answers_file: str | None = None, recall_at: tuple[int, ...] = (1, 5, 20), gen_batch_size: int = 8,
                 bm25_k1: float = 0.9, bm25_b: float = 0.4, eval_k: int = 100, num_examples: int = 3, seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if method == "hyde" and retriever != "dense":
            raise ValueError("HyDE searches with the mean of passage-encoder embeddings: set retriever: dense")
        if retriever not in ("bm25", "dense"):
            raise ValueError(f"retriever must be 'bm25' or 'dense', got {retriever!r}")
        self.save_hyperparameters()
        self.template = HYDE_TEMPLATES.get(hyde_template, hyde_template)
        self.examples: list[str] = []

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"ids": batch["ids"], "texts": batch["texts"]}

    validation_step = test_step

    def configure_optimizers(self):
        return None

    def configure_callbacks(self):
        return [RetrievalEvaluator(k=self.hparams.eval_k)]

    def _generator(self, max_new_tokens: int, sample: bool) -> TextGenerator:
        model, tokenizer = load_causal_lm(self.hparams.generator, device=self.device)
        return TextGenerator(model.eval(), tokenizer, max_new_tokens=max_new_tokens, batch_size=self.hparams.gen_batch_size,
                             do_sample=sample, temperature=self.hparams.temperature, stop_strings=("\n\n",) if sample else ("\n",))

    def rank(self, corpus: dict, queries: dict, k: int) -> dict[str, dict[str, float]]:
        hp = self.hparams
        encoder = None
        if hp.retriever == "dense":
            from retrieval.encoders import Encoder

            encoder = Encoder(hp.encoder, normalize=True, max_length=hp.encoder_max_length)
        # 1. index the corpus (the evaluator hands over title + text as one string per passage)
        passages = dict(zip(corpus["ids"], corpus["texts"]))
        retriever = make_retriever(hp.retriever, passages, encoder=encoder, k1=hp.bm25_k1, b=hp.bm25_b)
        texts = queries["texts"]
        # 2. search with the enhanced queries
        if hp.method == "hyde":
            ranking, docs = hyde_search(retriever, self._generator(hp.doc_tokens, sample=True), texts, k, hp.num_docs,
                                        self.template, hp.include_query)
            shown = [f"{q}\n\n---\n\n" + "\n\n---\n\n".join(d) for q, d in zip(texts, docs)]
        elif hp.method == "lamer":
            ranking, shown = lamer_search(retriever, self._generator(hp.draft_tokens, sample=False), texts, k,
                                          hp.num_candidates, hp.num_drafts, hp.lamer_template)
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
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            for i, text in enumerate(shown[:self.hparams.num_examples]):
                experiment.add_text(f"queries/{self.hparams.method}", "    " + text.replace("\n", "\n    "), global_step=i)
