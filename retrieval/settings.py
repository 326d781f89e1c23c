"""The settings of a dense retriever's encoder, grouped so every method names them alike
(``--model.init_args.encoder.name_or_path``, ``...encoder.pooling``, ``...encoder.precision``). A method gives
its own default instance; a config overrides single fields."""

from __future__ import annotations

from dataclasses import dataclass

from training.models import DEFAULT_ENCODER
from training.precision import PRECISIONS


@dataclass
class EncoderSettings:
    """Args:
        name_or_path: a local folder, a hub name, or ``all-MiniLM-L6-v2`` (shipped as a package).
        pooling: ``mean`` or ``cls``.
        query_max_length / passage_max_length: truncation of queries and passages, in tokens.
        precision: compute precision (``auto``, ``fp32``, ``bf16``; None: ``$RAGKIT_PRECISION``).
    """
    name_or_path: str = DEFAULT_ENCODER
    pooling: str = "mean"
    query_max_length: int = 64
    passage_max_length: int = 256
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"encoder.pooling {self.pooling!r}: expected 'mean' or 'cls'")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"encoder.precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")


@dataclass
class BM25Settings:
    """BM25 (bm25s): ``k1`` saturation, ``b`` length normalisation (Pyserini's BEIR values), Snowball
    ``stemmer`` and ``stopwords`` language (None: none)."""
    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str | None = "en"
