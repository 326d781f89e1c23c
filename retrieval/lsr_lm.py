"""The frozen LM's side of REPLUG LSR: how it scores log P_LM(y | d, x) (``LMScoring``), the scorer held outside
the LightningModule (``FrozenLM``), its scores through the disk cache of retrieval/lsr.py, and the evaluation with
the REPLUG ensemble over the retriever's top k (``ReplugEval``): EM/F1 of the generated answers (QA), perplexity
and bits per byte of y (language modelling):

    ppl = exp(-sum log p(y) / tokens of y),        bpb = -sum log p(y) / (ln 2 * bytes of y)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from generation.prompts import PromptFormat
from generation.qa_metrics import answer_recall_at_k, exact_match, f1_score
from generation.rag import answer_questions
from generation.replug import replug_score
from generation.scoring import score_triples
from retrieval.lsr import LMScoreCache, lm_logliks, module_fingerprint, settings_fingerprint, tokenizer_fingerprint
from retrieval.lsr_retriever import gold_metrics
from training.models import load_causal_lm
from training.precision import lm_precision
from training.settings import LM

REDUCTIONS = ("sum", "mean")


@dataclass
class LMScoring:
    """How the frozen LM scores y (``--model.init_args.scoring.cache runs/scores.sqlite``).

    Args:
        prompt: how (d, x) becomes the LM's prompt: a ``generation.prompts.PRESETS`` name or a PromptFormat.
        target_prefix: put before y (``" "`` after a prompt ending in ``Answer:``).
        reduction: ``sum`` (log P_LM(y | d, x), the paper) or ``mean`` (per-token mean).
        batch_size / max_length: prompts per LM batch; prompts cut to their last ``max_length`` tokens (None: whole).
        cache: SQLite file of LM scores (resumable across runs; None: score every time).
        shared_prefix: run the prompts' common leading tokens (instruction, demonstrations) once per call
            (generation.scoring.pair_logprobs); False runs every prompt whole (the same scores, slower).
    """
    prompt: str | PromptFormat = "few_shot"
    target_prefix: str = " "
    reduction: str = "sum"
    batch_size: int = 8
    max_length: int | None = None
    cache: str | None = None
    shared_prefix: bool = True

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"scoring.reduction {self.reduction!r}: expected one of {REDUCTIONS}")


@dataclass
class ReplugEval:
    """Evaluation with the REPLUG ensemble over the retriever's top ``k`` (``--model.init_args.replug.k 5``).

    Args:
        k: passages in the ensemble (0: retrieval metrics only).
        temperature: of the ensemble's weights softmax(s / T) (None: ``loss.gamma``, the retriever's own P_R).
        max_new_tokens / batch_size: REPLUG generation (QA).
    """
    k: int = 10
    temperature: float | None = None
    max_new_tokens: int = 24
    batch_size: int = 8


class FrozenLM:
    """The LM scorer, held outside the module tree: it is not in the state dict, the optimizer or DDP, and
    Lightning's train()/eval() switching never reaches it (it stays in eval mode, without gradients)."""

    def __init__(self, model, tokenizer):
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.fingerprint = f"{module_fingerprint(model)}-{tokenizer_fingerprint(tokenizer)}"
        if lm_precision(model) != "fp32":  # bf16 scores differ from fp32 ones: a separate cache key (fp32 keys unchanged)
            self.fingerprint += f"-{lm_precision(model)}"

    @classmethod
    def load(cls, lm: LM) -> "FrozenLM":
        """On the CPU (the module moves it to its device when a stage starts); a frozen scorer has nothing to train."""
        if lm.lora is not None or lm.gradient_checkpointing:
            raise ValueError("ReplugLSR.lm is a frozen scorer: lm.lora and lm.gradient_checkpointing do not apply")
        return cls(*load_causal_lm(lm.name_or_path, **lm.load_kwargs(), device="cpu"))

    def to(self, device) -> "FrozenLM":
        self.model.to(device)
        return self


def open_score_cache(frozen: FrozenLM, scoring: LMScoring, prompt: PromptFormat) -> LMScoreCache | None:
    """The cache of ``scoring.cache`` under this LM's and this prompt's identity (None without a file)."""
    if not scoring.cache:
        return None
    prompt_id = settings_fingerprint(prompt, scoring.target_prefix, scoring.reduction, scoring.max_length)
    return LMScoreCache(scoring.cache, frozen.fingerprint, prompt_id)


def lm_scores(frozen: FrozenLM, scoring: LMScoring, prompt: PromptFormat, cache: LMScoreCache | None,
              inputs: list[str], documents: list[list[str]], targets: list[str]) -> torch.Tensor:
    """(B, K) log P_LM(y | d, x) from the frozen LM, through the score cache. The LM computes in its own dtype and
    precision whatever the trainer's (the cache's key holds the LM's precision, not the trainer's autocast)."""
    score = partial(score_triples, frozen.model, frozen.tokenizer, prompt_format=prompt, reduction=scoring.reduction,
                    batch_size=scoring.batch_size, max_length=scoring.max_length, shared_prefix=scoring.shared_prefix)
    with torch.autocast(frozen.model.device.type, enabled=False):
        return lm_logliks(inputs, documents, [scoring.target_prefix + y for y in targets], score, cache)


def _top(hits, docs, k: int) -> tuple[list[list[str]], list[list[float]]]:
    return [d[:k] for d in docs], [[s for _, s in row[:k]] for row in hits]


def qa_metrics(frozen: FrozenLM, prompt: PromptFormat, replug: ReplugEval, temperature: float, batch: dict, hits,
               docs, eval_k: int, stage: str) -> list[tuple[dict[str, float], int]]:
    """(metrics, the questions they average over) of a QA batch: nDCG and recall of the gold passage at ``eval_k``
    (questions with one), answer-recall@1/@5, and EM and F1 of the answers the REPLUG ensemble over each question's
    top ``replug.k`` generates (``replug.k`` = 0: none)."""
    gold, n_gold = gold_metrics(batch["ids"], batch["gold_ids"], hits, eval_k, stage)
    n, answers = len(hits), batch["answers"]
    metrics = {f"{stage}/answer_recall@{r}": answer_recall_at_k(docs, answers, r) for r in (1, 5)}
    if replug.k:
        passages, scores = _top(hits, docs, replug.k)
        out = answer_questions("replug", frozen.model, frozen.tokenizer, batch["inputs"], passages, scores,
                               prompt_format=prompt, max_new_tokens=replug.max_new_tokens,
                               replug_temperature=temperature, batch_size=replug.batch_size)
        metrics[f"{stage}/replug_em"] = sum(map(exact_match, out.answers, answers)) / n
        metrics[f"{stage}/replug_f1"] = sum(map(f1_score, out.answers, answers)) / n
    return ([(gold, n_gold)] if n_gold else []) + [(metrics, n)]


@torch.no_grad()
def lm_sums(frozen: FrozenLM, scoring: LMScoring, prompt: PromptFormat, k: int, temperature: float,
            inputs: list[str], targets: list[str], hits, docs) -> torch.Tensor:
    """[log-lik without retrieval, log-lik with REPLUG over the top k, tokens of y, bytes of y] summed over a batch."""
    model, tok = frozen.model, frozen.tokenizer
    targets = [scoring.target_prefix + y for y in targets]
    none = score_triples(model, tok, [None] * len(targets), inputs, targets, prompt_format=prompt,
                         batch_size=scoring.batch_size, max_length=scoring.max_length,
                         shared_prefix=scoring.shared_prefix)
    passages, scores = _top(hits, docs, k)
    replug = replug_score(model, tok, inputs, passages, scores, targets, prompt_format=prompt, temperature=temperature,
                          batch_size=scoring.batch_size)
    tokens = sum(len(ids) for ids in tok(targets, add_special_tokens=False)["input_ids"])
    nbytes = sum(len(t.encode("utf-8")) for t in targets)
    return torch.tensor([none.sum().item(), replug.sum().item(), tokens, nbytes], dtype=torch.float64)


def lm_metrics(total: torch.Tensor, stage: str) -> dict[str, float]:
    """Perplexity and bits per byte of y, without retrieval and with REPLUG, from the sums of :func:`lm_sums`."""
    ll_none, ll_replug, tokens, nbytes = total.tolist()
    return {f"{stage}/ppl_no_retrieval": math.exp(-ll_none / tokens),
            f"{stage}/ppl_replug": math.exp(-ll_replug / tokens),
            f"{stage}/bpb_no_retrieval": -ll_none / (math.log(2) * nbytes),
            f"{stage}/bpb_replug": -ll_replug / (math.log(2) * nbytes)}
