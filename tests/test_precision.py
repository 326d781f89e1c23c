"""CPU precision follows the machine: bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), fp32
elsewhere; logged, overridable; bf16 results equal fp32 within tolerance. Nothing here depends on which
CPU runs it: detection is patched where the choice is tested, and the precisions are forced where the
results are compared."""

import logging

import pytest
import torch

import training.precision as precision_rule
from retrieval.encoders import Encoder
from training.precision import PRECISION_ENV, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    precision_rule._logged.clear()


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_and_is_logged(monkeypatch, caplog, native_bf16, expected):
    monkeypatch.setattr(precision_rule, "cpu_has_fast_bf16", lambda: native_bf16)
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision(None, "cpu") == expected  # no env var: auto
    assert f"encoder precision: {expected}" in caplog.text and PRECISION_ENV in caplog.text


def test_env_var_overrides_auto_and_argument_overrides_env(monkeypatch):
    monkeypatch.setattr(precision_rule, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precision_rule, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert resolve_precision(None, "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"


def test_auto_leaves_gpus_to_the_trainer(monkeypatch):
    monkeypatch.setattr(precision_rule, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cuda") == "fp32"


def test_bad_precision_names_its_source(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=f"'half' \\(from {PRECISION_ENV}\\).*auto, fp32, bf16"):
        resolve_precision(None, "cpu")
    with pytest.raises(ValueError, match="'fp16'"):
        Encoder.__init__(Encoder.__new__(Encoder), precision="fp16")


def test_cpu_detection_reads_the_machine():
    # Whatever this CPU is, the answer agrees with the kernel's flags (AVX512-BF16 or AMX-BF16).
    flags = open("/proc/cpuinfo").read().split()
    assert precision_rule.cpu_has_fast_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def _linear_output_dtypes(encoder: Encoder, texts: list[str]) -> set[torch.dtype]:
    seen = set()
    handle = encoder.model.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda module, args, out: seen.add(out.dtype))
    try:
        encoder.encode(texts, batch_size=4, show_progress=False)
    finally:
        handle.remove()
    return seen


TEXTS = ["a short query", "the title of a passage. and its body, a longer text about retrieval",
         "another document on a different topic entirely", "x", "dense retrieval with contrastive losses"]


def test_bf16_encoding_runs_in_bf16_and_matches_fp32(tiny_bert_dir):
    fp32 = Encoder(tiny_bert_dir, normalize=True, max_length=32, precision="fp32")
    bf16 = Encoder(tiny_bert_dir, normalize=True, max_length=32, precision="bf16")
    assert _linear_output_dtypes(fp32, TEXTS) == {torch.float32}
    assert _linear_output_dtypes(bf16, TEXTS) == {torch.bfloat16}
    a, b = fp32.encode(TEXTS, show_progress=False), bf16.encode(TEXTS, show_progress=False)
    assert a.dtype == b.dtype == torch.float32
    with torch.no_grad():  # pooling and normalisation in fp32: the forward pass returns fp32 too
        assert bf16(**bf16.tokenize(TEXTS)).dtype == torch.float32
    cosine = (a * b).sum(1)
    assert cosine.min() > 0.999 and not torch.equal(a, b)


def test_fp32_does_not_switch_off_the_callers_autocast(tiny_bert_dir):
    fp32 = Encoder(tiny_bert_dir, max_length=32, precision="fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _linear_output_dtypes(fp32, TEXTS) == {torch.bfloat16}


def test_bf16_training_step_matches_fp32(tiny_bert_dir):
    """Loss and weight gradients of one contrastive step agree within bf16 tolerance; weights stay fp32."""
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        enc = Encoder(tiny_bert_dir, normalize=True, max_length=32, precision=precision)
        batch = enc.tokenize(TEXTS)
        q = enc(**batch)
        p = enc(**enc.tokenize(list(reversed(TEXTS))))
        loss = torch.nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(len(TEXTS)))
        loss.backward()
        weight = enc.model.encoder.layer[0].attention.self.query.weight
        assert weight.dtype == torch.float32 and weight.grad.dtype == torch.float32
        results[precision] = (loss.detach(), weight.grad.clone())
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    assert torch.isclose(l16, l32, rtol=2e-2)
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99
    assert not torch.equal(g16, g32)
