"""RetRobust's training data (Yoran et al., 2024, appendix A.1): each training question is paired with ONE
retrieved passage, chosen by a seeded draw among three kinds of context,

    top1      the retriever's best passage for the question (usually relevant);
    low_rank  a passage the retriever ranked low for the same question (rank drawn uniformly from
              ``low_rank_range``, 1-based, inclusive): related-looking but mostly irrelevant;
    random    the top-1 passage of another training question (irrelevant),

with probabilities ``proportions`` (the paper: 1/3 each), so that the model learns to use relevant context
and to ignore irrelevant context. The prompt is the project's RAG prompt (``generation.prompts``, the
``few_shot`` preset by default, the format the evaluation reads with), the target the first gold answer
followed by ``answer_suffix``; only the target carries loss (``generation.tokens.TokenBatch.loss_mask``).

Validation and test questions get all three kinds of context (drawn the same way), so that one evaluation
pass can read each question with each kind, and closed-book.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from torch.utils.data import DataLoader

from datamodules.qa import QADataModule, QADataset
from datamodules.resumable import StatefulDataLoader, train_loader
from training.models import DEFAULT_GENERATOR, load_tokenizer
from generation.prompts import PromptFormat, prompt_format, uses_chat
from generation.robust_table import KINDS
from generation.tokens import TokenBatch
from retrieval.search import make_retriever


def draw_kinds(n: int, proportions: Sequence[float], rng: random.Random) -> list[str]:
    """``n`` context kinds drawn independently with probabilities ``proportions`` (over ``KINDS``)."""
    return rng.choices(KINDS, weights=list(proportions), k=n)


def choose_contexts(hits: Sequence[Sequence[str]], kinds: Sequence[str], low_rank_range: tuple[int, int],
                    rng: random.Random, avoid: Sequence[set[str]] | None = None,
                    all_ids: Sequence[str] | None = None) -> list[tuple[str, int | None]]:
    """``(passage id, rank)`` of each question's context; ``hits[i]`` is question i's ranked passage ids
    (best first, the passages the retriever scored above 0).

    A low-rank context is the passage at a rank drawn uniformly from ``low_rank_range``; when the retriever
    scored fewer passages than that rank, every unscored passage ties below the last hit, so the context is
    one of them (from ``all_ids``), drawn uniformly. A random context is the top-1 passage of another
    question, never one of ``avoid[i]`` (the question's own gold passage) nor its own top-1; its rank is None."""
    lo, hi = low_rank_range
    out = []
    for i, kind in enumerate(kinds):
        if not hits[i]:
            raise ValueError(f"choose_contexts: question {i} has no retrieved passage")
        if kind == "top1":
            out.append((hits[i][0], 1))
        elif kind == "low_rank":
            rank = rng.randint(lo, hi)
            if rank <= len(hits[i]):
                out.append((hits[i][rank - 1], rank))
            else:
                if all_ids is None:
                    raise ValueError(f"choose_contexts: question {i} has {len(hits[i])} hits, fewer than rank {rank}, "
                                     "and no all_ids to draw an unscored passage from")
                scored = set(hits[i])
                out.append((rng.choice([d for d in all_ids if d not in scored]), rank))
        elif kind == "random":
            own = (avoid[i] if avoid is not None else set()) | {hits[i][0]}
            candidates = [j for j in range(len(hits)) if j != i and hits[j][0] not in own]
            if not candidates:
                raise ValueError(f"choose_contexts: no other question has a top-1 passage usable as question {i}'s "
                                 "random context")
            out.append((hits[rng.choice(candidates)][0], None))
        else:
            raise ValueError(f"unknown context kind {kind!r}; expected one of {KINDS}")
    return out


class RetRobustDataModule(QADataModule):
    """The mixed-context training set, and evaluation questions with every kind of context.

    Args:
        train_file / val_file / test_file / corpus: as :class:`datamodules.qa.QADataModule` (the NQ pool).
        tokenizer: the LM's tokenizer (name or folder; link it to the model's in the config).
        retriever: ``bm25`` or ``dense`` (``retrieval.search.make_retriever``).
        encoder / encoder_max_length: the dense retriever's encoder.
        num_train: training questions, a seeded sample of the train split (None: all of it).
        limit_val / limit_test: first questions of the dev / test files (None: all).
        proportions: probabilities of ``top1``, ``low_rank``, ``random`` (sum to 1).
        low_rank_range: 1-based inclusive ranks a low-rank passage is drawn from.
        prompt: a preset of ``generation.prompts.PRESETS`` or a :class:`PromptFormat`.
        answer_suffix: text after the answer in the target: a newline ends an answer in the few-shot
            demonstrations and is where generation stops (``generation.generate``'s stop string).
        max_length: longest prompt + target in tokens; a longer example is an error (never cut silently).
        batch_size / eval_batch_size: training examples / evaluation questions per batch.
        seed: the draw of training questions, kinds, ranks and random passages.
    """

    def __init__(self, train_file: str = "data/nq_pool/train.jsonl", val_file: str | None = "data/nq_pool/dev.jsonl",
                 test_file: str | None = "data/nq_pool/test.jsonl", corpus: str = "data/nq_pool",
                 tokenizer: str = DEFAULT_GENERATOR, retriever: str = "bm25", encoder: str | None = None,
                 encoder_max_length: int = 256, num_train: int | None = 1000, limit_val: int | None = None,
                 limit_test: int | None = None, proportions: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
                 low_rank_range: tuple[int, int] = (11, 20), prompt: str | PromptFormat = "few_shot",
                 answer_suffix: str = "\n", max_length: int = 1024, batch_size: int = 8, eval_batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0):
        super().__init__(test_file=test_file, val_file=val_file, train_file=train_file, corpus=corpus, limit=None,
                         batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(ignore=["prompt"])
        self.hparams.limit = None  # read by QADataModule.setup; the splits are limited per split here
        if (len(proportions) != len(KINDS) or not all(math.isfinite(p) and p >= 0 for p in proportions)
                or abs(sum(proportions) - 1) > 1e-6):
            raise ValueError(f"RetRobustDataModule.proportions: expected {len(KINDS)} finite non-negative "
                             f"probabilities of {KINDS} summing to 1, got {list(proportions)}")
        lo, hi = low_rank_range
        if not 2 <= lo <= hi:
            raise ValueError(f"RetRobustDataModule.low_rank_range: expected 2 <= start <= end, got {list(low_rank_range)}")
        if retriever not in ("bm25", "dense"):
            raise ValueError(f"RetRobustDataModule.retriever: 'bm25' or 'dense', got {retriever!r} (random contexts "
                             "are drawn from the other questions' top-1)")
        self.prompt_format = prompt_format(prompt)
        self.tokenizer = None
        self.retriever = None
        self.examples: dict[str, list[dict]] = {}

    # -- building the sets --------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)   # the splits this stage reads (datamodules.qa.needs_split)
        hp = self.hparams
        if self.retriever is None:
            self.tokenizer = load_tokenizer(hp.tokenizer)
            encoder = None
            if hp.retriever == "dense":
                from retrieval.encoders import DEFAULT_ENCODER, Encoder

                encoder = Encoder(hp.encoder or DEFAULT_ENCODER, normalize=True, max_length=hp.encoder_max_length)
            self.retriever = make_retriever(hp.retriever, self.corpus, encoder=encoder)
        limits = {"train": None, "val": hp.limit_val, "test": hp.limit_test}
        for split, rows in self.splits.items():
            if split in self.examples:
                continue
            rng = random.Random(f"{hp.seed}-{split}")
            if split == "train" and hp.num_train is not None:
                if hp.num_train > len(rows):
                    raise ValueError(f"RetRobustDataModule.num_train={hp.num_train}, but {hp.train_file} has only "
                                     f"{len(rows)} questions")
                rows = rng.sample(rows, hp.num_train)
            elif limits[split] is not None:
                rows = rows[:limits[split]]
            self.examples[split] = (self.training_examples(rows, rng) if split == "train"
                                    else self.evaluation_examples(rows, rng))

    def _hits(self, rows: list[dict]) -> list[list[str]]:
        hi = self.hparams.low_rank_range[1]
        if hi > len(self.doc_ids):
            raise ValueError(f"RetRobustDataModule.low_rank_range ends at rank {hi}, but the corpus has only "
                             f"{len(self.doc_ids)} passages")
        hits = [[d for d, _ in row] for row in self.retriever.search([r["question"] for r in rows], hi)]
        empty = [r["id"] for r, h in zip(rows, hits) if not h]
        if empty:
            raise ValueError(f"the {self.hparams.retriever} retriever found no passage for questions {empty[:5]}")
        return hits

    def _avoid(self, rows: list[dict]) -> list[set[str]]:
        return [{r["gold_id"]} if r.get("gold_id") else set() for r in rows]

    def training_examples(self, rows: list[dict], rng: random.Random) -> list[dict]:
        """One example per question: its context kind, passage id, rank, and token segments."""
        hp = self.hparams
        hits = self._hits(rows)
        kinds = draw_kinds(len(rows), hp.proportions, rng)
        contexts = choose_contexts(hits, kinds, tuple(hp.low_rank_range), rng, self._avoid(rows), self.doc_ids)
        out = []
        for r, kind, (pid, rank) in zip(rows, kinds, contexts):
            ex = {"id": r["id"], "question": r["question"], "answers": r["answers"], "kind": kind, "passage_id": pid,
                  "rank": rank, "target": f" {r['answers'][0].strip()}{hp.answer_suffix}"}
            ex["segments"] = self.segments(r["question"], self.passages[pid], ex["target"], where=r["id"])
            out.append(ex)
        return out

    def evaluation_examples(self, rows: list[dict], rng: random.Random) -> list[dict]:
        """Each question with a passage of every kind: ``contexts[kind] = (passage id, rank)``."""
        hits = self._hits(rows)
        avoid = self._avoid(rows)
        per_kind = {k: choose_contexts(hits, [k] * len(rows), tuple(self.hparams.low_rank_range), rng, avoid,
                                    self.doc_ids)
                    for k in KINDS}
        return [{**r, "contexts": {k: per_kind[k][i] for k in KINDS}} for i, r in enumerate(rows)]

    def segments(self, question: str, passage: str, target: str, where: str = "?") -> list[tuple[list[int], int]]:
        """``[(prompt ids, 0), (target ids, 1)]``: the prompt exactly as the evaluation renders it
        (``PromptFormat.render``, special tokens as ``generation.rag.read`` adds them)."""
        fmt, tok = self.prompt_format, self.tokenizer
        prompt = fmt.render(tok, question, [passage])
        prompt_ids = tok(prompt, add_special_tokens=not uses_chat(tok, fmt.chat))["input_ids"]
        target_ids = tok(target, add_special_tokens=False)["input_ids"]
        if not target_ids:
            raise ValueError(f"question {where}: the answer target {target!r} has no tokens")
        if len(prompt_ids) + len(target_ids) > self.hparams.max_length:
            raise ValueError(f"question {where}: prompt + answer are {len(prompt_ids) + len(target_ids)} tokens, more "
                             f"than max_length={self.hparams.max_length}")
        return [(prompt_ids, 0), (target_ids, 1)]

    # -- batches ------------------------------------------------------------------------------------
    def collate_train(self, examples: list[dict]) -> dict:
        pad_id = self.tokenizer.pad_token_id
        return {"tokens": TokenBatch.from_segments([e["segments"] for e in examples], pad_id, side="right"),
                "kinds": [e["kind"] for e in examples], "ids": [e["id"] for e in examples]}

    def collate_eval(self, examples: list[dict]) -> dict:
        return {"ids": [e["id"] for e in examples], "questions": [e["question"] for e in examples],
                "answers": [e["answers"] for e in examples],
                "contexts": {k: [self.passages[e["contexts"][k][0]] for e in examples] for k in KINDS},
                # the supervised loss with each kind of context (validation loss)
                "tokens": {k: TokenBatch.from_segments(
                    [self.segments(e["question"], self.passages[e["contexts"][k][0]],
                                   f" {e['answers'][0].strip()}{self.hparams.answer_suffix}", e["id"])
                     for e in examples], self.tokenizer.pad_token_id, side="right") for k in KINDS}}

    def _split(self, split: str) -> list[dict]:
        if split not in self.examples:
            raise ValueError(f"RetRobustDataModule: no {split} file configured")
        return self.examples[split]

    def train_dataloader(self) -> StatefulDataLoader:
        hp = self.hparams
        return train_loader(QADataset(self._split("train")), hp.batch_size, hp.seed, self.trainer,
                            collate_fn=self.collate_train, num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(QADataset(self._split("val")), batch_size=self.hparams.eval_batch_size,
                          collate_fn=self.collate_eval, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(QADataset(self._split("test")), batch_size=self.hparams.eval_batch_size,
                          collate_fn=self.collate_eval, num_workers=self.hparams.num_workers)
