"""Text encoders for dense retrieval: a Hugging Face model plus pooling, loading that works offline,
batched encoding, and export in a format sentence-transformers and transformers both load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.models import DEFAULT_ENCODER, from_pretrained
from training.precision import PRECISIONS, precision_autocast
from training.progress import progress
def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) attention mask -> (B, H) sentence embeddings."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ValueError(f"unknown pooling {mode!r}; expected 'mean' or 'cls'")


class Encoder(nn.Module):
    """A transformer encoder with pooling and optional L2 normalisation: texts -> vectors.

    ``dropout``: whether the transformer's dropout is active in training mode. Off by default: the
    SciFact DPR demo (75 steps from all-MiniLM-L6-v2) was measured without it (nDCG@10 0.745).

    ``precision``: ``"auto"`` (bf16 autocast on CPUs with native bf16, else fp32), ``"fp32"``, ``"bf16"``, or
    None for ``$RAGKIT_PRECISION`` (see :func:`resolve_precision`). It applies to every forward pass, training
    included; weights stay fp32 and embeddings are returned in fp32."""

    def __init__(self, model_name_or_path: str = DEFAULT_ENCODER, pooling: str = "mean", normalize: bool = False,
                 max_length: int = 256, dropout: bool = False, precision: str | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}; expected 'mean' or 'cls'")
        self.model = from_pretrained(AutoModel, model_name_or_path)
        # BERT's pooler is never used (pooling reads last_hidden_state): it would get no gradient, which DDP
        # rejects as an unused parameter. Freezing it changes nothing else (AdamW skips grad-less params).
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler.requires_grad_(False)
        self.dropout = dropout
        self.train()
        self.tokenizer = from_pretrained(AutoTokenizer, model_name_or_path)
        self.pooling, self.normalize, self.max_length = pooling, normalize, max_length
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.precision = precision

    def autocast(self, device: torch.device):
        """:func:`precision_autocast` with this encoder's ``precision``."""
        return precision_autocast(self.precision, device)

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        self.model.train(mode and self.dropout)
        return self

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or self.max_length,
                              return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        """(B, T) ids and mask -> (B, H) float32 embeddings (the transformer may run in bf16, see ``precision``)."""
        with self.autocast(input_ids.device):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        emb = pool(hidden.float(), attention_mask, self.pooling)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, max_length: int | None = None,
               show_progress: bool = True, desc: str = "encode") -> torch.Tensor:
        """(N, H) float32 embeddings on CPU. Texts are processed longest first so each batch pads to
        similar lengths, then returned in input order."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in progress(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not show_progress):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], max_length).items()}
            out[idx] = self.forward(**batch).float().cpu()
        self.train(was_training)
        return out

    def save(self, path: str | Path) -> None:
        """Save as a Hugging Face model + tokenizer with the sentence-transformers module files, so that
        ``AutoModel.from_pretrained(path)`` and ``SentenceTransformer(path)`` both load it."""
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as models

        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        transformer = models.Transformer(str(path), max_seq_length=self.max_length)
        modules = [transformer, models.Pooling(self.dim, pooling_mode=self.pooling)]
        if self.normalize:
            modules.append(models.Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(path))
        (path / "ragkit_encoder.json").write_text(json.dumps(
            {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}, indent=2) + "\n")
