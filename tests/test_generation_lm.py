"""LM loading: local folders, LoRA, 4-bit QLoRA, the offline error, the SmolLM2 GGUF conversion (slow)."""

from __future__ import annotations

import pytest
import torch

from training.models import default_generator_path, load_causal_lm, resolve_generator_path


def test_load_local_folder_pads_left_and_sets_pad(tiny_llama_dir):
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu")
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    batch = tok(["hello", "a much longer prompt than the first"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_lora_trains_only_adapters(tiny_llama_dir):
    model, _ = load_causal_lm(tiny_llama_dir, device="cpu",
                              lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x (q_proj, v_proj) x (A, B)
    assert len(trainable) == 2 * 2 * 2
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8


def test_qlora_4bit_on_cpu_uses_nf4_and_fp32_compute(tiny_llama_dir):
    import bitsandbytes as bnb

    model, tok = load_causal_lm(tiny_llama_dir, device="cpu", load_in_4bit=True,
                                lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q, bnb.nn.Linear4bit)
    assert q.weight.quant_type == "nf4" and q.compute_dtype == torch.float32
    batch = tok(["question: who? answer:"], return_tensors="pt")

    def lora_grads():
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_B" in n and p.grad is not None}

    before = lora_grads()
    assert len(before) == 2 * 2 and all(g.abs().sum() > 0 for g in before.values())
    # An eval-mode no-grad pass (validation, a rollout) must not change how the frozen 4-bit layers compute:
    # on AVX512-BF16 CPUs bitsandbytes would repack them for a bf16 kernel that passes no gradient to its input
    # (and crashes on these 32-wide layers).
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    assert not any(getattr(getattr(m, "weight", None), "quant_state", None) is not None
                   and getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert not any(m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    after = lora_grads()
    assert after.keys() == before.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


def test_unknown_hub_name_offline_gives_clear_error():
    with pytest.raises(OSError, match="not a local directory"):
        load_causal_lm("no-such-org/no-such-model-xyz", device="cpu")


def test_other_names_pass_through(tmp_path):
    assert resolve_generator_path(str(tmp_path)) == str(tmp_path)
    assert resolve_generator_path("gpt2") == "gpt2"


@pytest.mark.slow
def test_default_generator_converts_gguf_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path))
    path = default_generator_path()
    assert path == str(tmp_path / "smollm2-135m-instruct")
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-instruct"]  # no temp folder left behind
    assert resolve_generator_path("HuggingFaceTB/SmolLM2-135M-Instruct") == path
    model, tok = load_causal_lm("smollm2-135m-instruct", device="cpu")
    assert model.config.num_hidden_layers == 30 and tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    batch = tok([prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:])
