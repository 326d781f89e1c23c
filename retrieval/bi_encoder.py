"""The encoders of a dense retriever (ContrastiveRetriever, ReplugLSR): built from
:class:`retrieval.settings.EncoderSettings`, a corpus encoded with whole parameters under FSDP2, and the
export that transformers and sentence-transformers load (LoRA adapters merged in)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from retrieval.encoders import Encoder
from retrieval.settings import EncoderSettings
from training.lora import apply_lora, merged
from training.sharding import full_parameters


def build_encoder(settings: EncoderSettings, normalize: bool, max_length: int | None = None,
                  lora: dict | None = None) -> Encoder:
    """An :class:`Encoder` from ``settings`` (truncating at ``max_length``, default the passages'), with LoRA
    adapters ``{r, alpha, dropout, target_modules}`` (training.lora) if given, in ``settings.dtype``."""
    encoder = Encoder(settings.name_or_path, settings.pooling, normalize, max_length or settings.passage_max_length,
                      settings.dropout, precision=settings.precision)
    if lora:
        encoder.model = apply_lora(encoder.model, **lora)
    return encoder.to(getattr(torch, settings.dtype)) if settings.dtype is not None else encoder


def encode_texts(encoder: Encoder, texts: Sequence[str], max_length: int, batch_size: int = 64) -> torch.Tensor:
    """(N, H) float32 embeddings on CPU. Under FSDP2 the parameters are gathered whole first, so ranks may
    encode shares of a corpus of different sizes without waiting on each other."""
    with full_parameters(encoder.model):
        return encoder.encode(texts, batch_size, max_length, show_progress=False)


def save_encoder(encoder: Encoder, path: str | Path) -> None:
    """``encoder`` as a Hugging Face + sentence-transformers folder; LoRA adapters are merged into the saved
    weights (the encoder itself keeps its adapters)."""
    if not hasattr(encoder.model, "merge_and_unload"):
        encoder.save(path)
        return
    adapted = encoder.model
    encoder.model = merged(adapted)  # a merged copy: the module keeps training its adapters
    try:
        encoder.save(path)
    finally:
        encoder.model = adapted


def export_encoders(path: str | Path, passage_encoder: Encoder, query_encoder: Encoder | None = None) -> None:
    """One shared encoder at ``path``; separate encoders at ``path/query`` and ``path/passage``."""
    path = Path(path)
    if query_encoder is None:
        save_encoder(passage_encoder, path)
    else:
        save_encoder(query_encoder, path / "query")
        save_encoder(passage_encoder, path / "passage")
