"""RetRobust's training-free NLI filter (Yoran et al., 2024): keep the retrieval-augmented answer only if
the retrieved passage (premise) entails "question + answer" (hypothesis); otherwise fall back to the
LM's closed-book answer.

Two judges with one interface, ``entailment_probs(premises, hypotheses) -> (N,)`` and ``entails``:
- :class:`NLIClassifier`: a Hugging Face sequence-classification NLI model (e.g. bart-large-mnli); the
  entailment class is found by name in ``config.id2label``, never assumed by position;
- :class:`LMJudge`: a prompted causal LM answering yes/no; P(entail) = p(yes) / (p(yes) + p(no)), from
  the LM's log-likelihoods of the two replies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from generation.prompts import render_message, uses_chat
from generation.scoring import reduce_logprobs, token_logprobs
from training.models import from_pretrained

JUDGE_TEMPLATE = ("Premise: {premise}\n\nHypothesis: {hypothesis}\n\n"
                  "Does the premise support the hypothesis? Reply with Yes or No.")


def nli_hypothesis(question: str, answer: str) -> str:
    """RetRobust's hypothesis: the question followed by the candidate answer."""
    return f"{question.strip()} {answer.strip()}"


def select_answers(entailed: Sequence[bool], rag_answers: Sequence[str], closed_book_answers: Sequence[str]) -> list[str]:
    """Per question: the retrieval-augmented answer where its passage entails it, else the closed-book one."""
    if not len(entailed) == len(rag_answers) == len(closed_book_answers):
        raise ValueError("select_answers: entailed, rag_answers and closed_book_answers differ in length")
    return [r if e else c for e, r, c in zip(entailed, rag_answers, closed_book_answers)]


def entailment_label(id2label: dict) -> int:
    """Index of the entailment class in a config's ``id2label`` (case-insensitive 'entail...')."""
    hits = [int(i) for i, name in id2label.items() if str(name).lower().startswith("entail")]
    if len(hits) != 1:
        raise ValueError(f"NLI model config: expected exactly one label starting with 'entail' in id2label, got "
                         f"{id2label}; set id2label in the model's config.json")
    return hits[0]


def calibrate_threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The entailment-probability threshold that best separates ``positive`` pairs (premise known to
    support the hypothesis, e.g. the gold passage) from ``negative`` ones (e.g. a random passage):
    argmax over the observed values t of balanced accuracy (P(pos >= t) + P(neg < t)) / 2, the
    smallest such t on ties. For judges whose yes/no probabilities are not calibrated at 0.5, such as
    a small prompted LM; fit it on a dev split, never on the test questions."""
    positive, negative = positive.flatten().float(), negative.flatten().float()
    if not len(positive) or not len(negative):
        raise ValueError("calibrate_threshold: needs at least one positive and one negative pair")
    candidates = torch.cat([positive, negative]).unique()  # sorted ascending
    accuracy = ((positive[None, :] >= candidates[:, None]).float().mean(1)
                + (negative[None, :] < candidates[:, None]).float().mean(1)) / 2
    return candidates[int(accuracy.argmax())].item()  # argmax returns the first (smallest t) maximum


class NLIClassifier:
    """A Hugging Face NLI classifier over (premise, hypothesis) pairs.

    ``entails`` is True when the entailment class is the argmax (``threshold=None``) or its probability
    reaches ``threshold``."""

    def __init__(self, model_name_or_path: str, *, device: str | None = None, batch_size: int = 16,
                 max_length: int = 512, threshold: float | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = from_pretrained(AutoModelForSequenceClassification, model_name_or_path).eval()
        self.tokenizer = from_pretrained(AutoTokenizer, model_name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.entail_id = entailment_label(self.model.config.id2label)
        self.batch_size, self.max_length, self.threshold = batch_size, max_length, threshold

    @torch.inference_mode()
    def probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> torch.Tensor:
        """(N, num_labels) class probabilities."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"NLI: {len(premises)} premises but {len(hypotheses)} hypotheses")
        out = []
        for s in range(0, len(premises), self.batch_size):
            batch = self.tokenizer(list(premises[s:s + self.batch_size]), list(hypotheses[s:s + self.batch_size]),
                                   padding=True, truncation="only_first", max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            out.append(torch.softmax(self.model(**batch).logits.float(), -1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.num_labels)

    def entailment_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> torch.Tensor:
        return self.probs(premises, hypotheses)[:, self.entail_id]

    def entails(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[bool]:
        p = self.probs(premises, hypotheses)
        if self.threshold is None:
            return (p.argmax(-1) == self.entail_id).tolist()
        return (p[:, self.entail_id] >= self.threshold).tolist()


class LMJudge:
    """A prompted causal LM as the entailment judge, for when no NLI model is at hand.

    P(entail) = exp(l_yes) / (exp(l_yes) + exp(l_no)) with l = log p(reply | judge prompt); ``entails``
    is P(entail) >= ``threshold``."""

    def __init__(self, model, tokenizer, *, template: str = JUDGE_TEMPLATE, yes: str = "Yes", no: str = "No",
                 threshold: float = 0.5, batch_size: int = 8, max_length: int | None = 1024, chat: bool | None = None):
        self.model, self.tokenizer, self.template, self.chat = model, tokenizer, template, chat
        self.yes, self.no, self.threshold, self.batch_size, self.max_length = yes, no, threshold, batch_size, max_length

    def entailment_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> torch.Tensor:
        if len(premises) != len(hypotheses):
            raise ValueError(f"LMJudge: {len(premises)} premises but {len(hypotheses)} hypotheses")
        chat = uses_chat(self.tokenizer, self.chat)
        prefix = "" if chat else "Answer:"
        sep = "" if chat else " "
        prompts = [render_message(self.tokenizer, self.template.format(premise=p, hypothesis=h), chat=self.chat,
                                  answer_prefix=prefix) for p, h in zip(premises, hypotheses)]
        targets = [sep + self.yes] * len(prompts) + [sep + self.no] * len(prompts)
        lp = reduce_logprobs(token_logprobs(self.model, self.tokenizer, prompts + prompts, targets,
                                            batch_size=self.batch_size, add_special_tokens=not chat,
                                            max_length=self.max_length))
        l_yes, l_no = lp[:len(prompts)], lp[len(prompts):]
        return torch.sigmoid(l_yes - l_no)  # = e^{l_yes} / (e^{l_yes} + e^{l_no})

    def entails(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[bool]:
        return (self.entailment_probs(premises, hypotheses) >= self.threshold).tolist()

    def calibrate(self, supporting: Sequence[str], unrelated: Sequence[str], hypotheses: Sequence[str]) -> float:
        """Set ``threshold`` with :func:`calibrate_threshold` from premises that support each hypothesis and
        premises that do not (e.g. dev questions' gold and random passages); returns it."""
        self.threshold = calibrate_threshold(self.entailment_probs(supporting, hypotheses),
                                             self.entailment_probs(unrelated, hypotheses))
        return self.threshold


class AdaptersOffJudge:
    """A judge run on the base model (a peft model's adapters disabled), whichever row is evaluated:
    RetRobust's filter must not change between the base and trained rows, only the reader does."""

    def __init__(self, judge: LMJudge, model):
        self.judge, self.model = judge, model

    def entails(self, premises, hypotheses) -> list[bool]:
        with self.model.disable_adapter():
            return self.judge.entails(premises, hypotheses)


def make_judge(settings, model, tokenizer, *, batch_size: int = 8, device: str | None = None,
               adapters_off: bool = False):
    """The judge of an :class:`generation.settings.NLIFilter`: ``model`` (the reader) as a prompted
    :class:`LMJudge` (threshold 0.5 unless set; with ``adapters_off``, its base without LoRA adapters), or an
    :class:`NLIClassifier` loaded from ``settings.model``."""
    if settings.model != "lm":
        return NLIClassifier(settings.model, threshold=settings.threshold, device=device)
    judge = LMJudge(model, tokenizer, threshold=0.5 if settings.threshold is None else settings.threshold,
                    batch_size=batch_size)
    return AdaptersOffJudge(judge, model) if adapters_off else judge
