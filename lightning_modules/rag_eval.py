"""RAGEvaluator: retrieval-augmented inference evaluated as the test loop of an evaluation-only module.

Methods (``method``):
  closed_book  answer from the LM alone;
  read         retrieve-and-read: the top-k passages in one prompt;
  replug       REPLUG ensemble: one prompt per passage, next-token distributions mixed with softmax
               weights over the retrieval scores (greedy);
  recitation   the LM recites a passage from memory, then answers from it (no retrieval);
  nli_filter   RetRobust: read with the passages, keep the answer only if an NLI judge says the passages
               entail "question + answer", else answer closed-book.
Retrievers (``retriever``): bm25, dense, random (irrelevant context). Logs EM, F1, answer-recall@k of
the retrieved passages, wall time, and a few prompts/answers as text; writes every rank's predictions to
one ``predictions.jsonl`` in the log directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from generation.nli import make_judge
from generation.prompts import PromptFormat, prompt_format
from generation.qa_metrics import exact_match, f1_score, has_answer
from generation.rag import METHODS, NO_RETRIEVAL, Answers, answer_questions
from generation.settings import Generation, NLIFilter
from retrieval.search import retriever_from_settings
from retrieval.settings import BM25Settings, EncoderSettings
from training.distributed import gather_objects
from training.models import load_causal_lm
from training.records import code_block, log_texts, merge_records, write_jsonl
from training.settings import LM, as_settings, save_settings


class RAGEvaluator(L.LightningModule):
    """Args:
        method: one of ``METHODS``.
        lm: the causal LM that answers (``smollm2-135m-instruct`` = the offline default).
        retriever: ``bm25``, ``dense`` or ``random`` (ignored by closed_book and recitation).
        top_k: passages per question.
        encoder / bm25: the dense retriever's encoder, BM25's parameters.
        nli: the NLI filter's judge (``nli.model: lm``: the LM itself, prompted; else an NLI classifier's name
            or folder) and its entailment threshold.
        replug_temperature: softmax temperature over the retrieval scores.
        generation: greedy answers (``max_new_tokens``; ``batch_size`` prompts at once).
        recitation_tokens: the longest recitation, in tokens.
        prompt: a preset name of ``generation.prompts.PRESETS`` (``few_shot``: plain text with four NQ-train
            demonstrations, the default for SmolLM2; ``zero_shot_chat``) or a :class:`PromptFormat`.
        num_examples: prompts/answers logged as text.
    """

    evaluation_only = True

    def __init__(self, method: str = "read", lm: LM = LM(), retriever: str = "bm25", top_k: int = 5,
                 encoder: EncoderSettings = EncoderSettings(query_max_length=256), bm25: BM25Settings = BM25Settings(),
                 nli: NLIFilter = NLIFilter(), replug_temperature: float = 1.0, generation: Generation = Generation(),
                 recitation_tokens: int = 96, prompt: str | PromptFormat = "few_shot", num_examples: int = 5,
                 seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        save_settings(self, ignore=["prompt"])
        self.prompt = prompt_format(prompt)
        # the groups as given (under LightningCLI, hparams hold their config dicts instead)
        self.lm_settings, self.encoder, self.bm25 = as_settings(lm, LM), as_settings(encoder, EncoderSettings), \
            as_settings(bm25, BM25Settings)
        self.nli, self.generation = as_settings(nli, NLIFilter), as_settings(generation, Generation)
        self.lm = self.tokenizer = self.search = self.judge = None
        self.records: list[dict] = []

    # -- set-up -----------------------------------------------------------------------------------
    @property
    def uses_retrieval(self) -> bool:
        return self.hparams.method not in NO_RETRIEVAL

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self.lm is None:
            self.lm, self.tokenizer = load_causal_lm(self.lm_settings.name_or_path, device=self.device,
                                                     **self.lm_settings.load_kwargs())
            self.lm.eval()
        if self.uses_retrieval and self.search is None:
            dm = self.trainer.datamodule
            if not getattr(dm, "passages", None):
                raise ValueError(f"method {hp.method!r} retrieves, but the datamodule has no passage pool (data.corpus)")
            self.search = retriever_from_settings(hp.retriever, dm.corpus, encoder=self.encoder, bm25=self.bm25,
                                                  seed=hp.seed)
        if hp.method == "nli_filter" and self.judge is None:
            self.judge = make_judge(self.nli, self.lm, self.tokenizer, batch_size=self.generation.batch_size)

    def configure_optimizers(self):
        return None

    def answer(self, questions: list[str], passages: list[list[str]], scores: list[list[float]]) -> Answers:
        hp = self.hparams
        return answer_questions(hp.method, self.lm, self.tokenizer, questions, passages, scores, prompt_format=self.prompt,
                                judge=self.judge, max_new_tokens=self.generation.max_new_tokens,
                                recitation_tokens=hp.recitation_tokens, replug_temperature=hp.replug_temperature,
                                batch_size=self.generation.batch_size)

    def on_test_epoch_start(self) -> None:
        self.records, self._start = [], time.perf_counter()

    # no @torch.inference_mode here: Lightning's test loop already runs without grad, and inference tensors
    # in the logged metrics break their sync across processes (in-place update outside inference mode)
    def test_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        questions, gold = batch["questions"], batch["answers"]
        # 1. retrieve (top-k passages and their scores)
        passages, scores = [[] for _ in questions], [[] for _ in questions]
        if self.uses_retrieval:
            hits = self.search.retrieve(questions, hp.top_k)
            passages = [[p.contents for p in row] for row in hits]
            scores = [[p.score for p in row] for row in hits]
        # 2. answer with the method
        out = self.answer(questions, passages, scores)
        # 3. score: EM / F1 with SQuAD normalisation, answer recall of the retrieved passages
        em = torch.tensor([exact_match(a, g) for a, g in zip(out.answers, gold)])
        f1 = torch.tensor([f1_score(a, g) for a, g in zip(out.answers, gold)])
        metrics = {"test/em": em.mean(), "test/f1": f1.mean()}
        if self.uses_retrieval:
            metrics[f"test/answer_recall@{hp.top_k}"] = torch.tensor(
                [float(any(has_answer(p, g) for p in ps)) for ps, g in zip(passages, gold)]).mean()
        if "entailed" in out.extra:
            metrics["test/nli_kept"] = torch.tensor(out.extra["entailed"], dtype=torch.float).mean()
        # floats: Lightning makes them tensors on the module's device, the one NCCL's epoch-end sync can reduce
        self.log_dict({k: float(v) for k, v in metrics.items()}, batch_size=len(questions), on_epoch=True,
                      sync_dist=True)
        for i, q in enumerate(questions):
            self.records.append({"id": batch["ids"][i], "question": q, "answers": gold[i], "prediction": out.answers[i],
                                 "generation": out.generations[i], "prompt": out.prompts[i], "em": em[i].item(),
                                 "f1": f1[i].item(), **{k: v[i] for k, v in out.extra.items()}})

    def on_test_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._start
        self.log("test/seconds", seconds, sync_dist=False, rank_zero_only=True)
        records = merge_records(gather_objects(self.records))  # every rank's predictions, not only rank 0's
        log_dir = Path(self.trainer.log_dir or ".")  # a broadcast under DDP: every rank must ask
        if not self.trainer.is_global_zero:
            return
        self.records = records
        write_jsonl(log_dir / "predictions.jsonl", records)
        log_texts(self.logger, f"examples/{self.hparams.method}", [example_text(r) for r in records[:self.hparams.num_examples]])


def example_text(r: dict) -> str:
    """One prediction record as Markdown: question, gold, prediction with its scores, generation, prompt."""
    return (f"**question** {r['question']}  \n**gold** {r['answers']}  \n**prediction** {r['prediction']} "
            f"(EM {r['em']:.0f}, F1 {r['f1']:.2f})  \n**generation** {r['generation']!r}\n\n" + code_block(r["prompt"]))
