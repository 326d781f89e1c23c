"""bench/dry_run.py on every shipped GPU config (meta device only: no weights, no GPU): each resolves through the
entry point, builds its architecture from configs/model_configs, and fits the cards it was written for; a config
that cannot fit, or whose LoRA targets match no module, stops with a clear error."""

from __future__ import annotations

import glob

import pytest

from bench.dry_run import DryRunError, estimate, main, resolve_config

# (config, GPUs, GiB per GPU): the settings each config's header names
FSDP2 = "configs/trainer/fsdp2.yaml"
GPU_CONFIGS = {"configs/search_r1_qwen3b_fsdp.yaml": (8, 80), "configs/score_stage1_math_gpu.yaml": (8, 80),
               "configs/score_stage2_math_gpu.yaml": (8, 80), "configs/score_stage1_mbpp_gpu.yaml": (8, 80),
               "configs/score_stage2_mbpp_gpu.yaml": (8, 80), "configs/retrobust_llama13b_qlora.yaml": (1, 24)}


def test_every_gpu_config_is_covered():
    shipped = {p for p in glob.glob("configs/*.yaml") if p.endswith("_gpu.yaml") or "fsdp" in p or "13b" in p}
    assert shipped == set(GPU_CONFIGS)


@pytest.mark.parametrize("path", sorted(GPU_CONFIGS))
def test_gpu_config_fits_its_cards(path, capsys):
    gpus, mem = GPU_CONFIGS[path]
    preset = [] if "qlora" in path else ["--config", FSDP2]  # the FSDP2 experiments take their strategy from the preset
    assert main(["--config", path, *preset, "--gpus", str(gpus), "--gpu-mem", str(mem)]) == 0
    out = capsys.readouterr().out
    for line in ("params", "grads", "optimizer", "activations", "peak"):
        assert f"  {line}" in out, line
    assert "(fits)" in out


def test_numbers_follow_the_sharding_and_the_architecture():
    config = resolve_config(["--config", "configs/search_r1_qwen3b_fsdp.yaml", "--config", FSDP2])
    one, eight = estimate(config, 1, 80), estimate(config, 8, 80)
    # Qwen2.5-3B: 3.09B parameters, all trained in bf16, a frozen bf16 copy as the KL reference, AdamW in bf16;
    # the e5-base-v2 search encoder (109M, fp32) is whole on every GPU
    params = 3.0859e9
    gib = 1024 ** 3
    assert one.lines["grads"] == pytest.approx(params * 2 / gib, rel=1e-3)
    assert one.lines["optimizer"] == pytest.approx(params * 4 / gib, rel=1e-3)
    assert one.lines["params"] == pytest.approx((params * 4 + 109.5e6 * 4) / gib, rel=2e-3)
    assert eight.lines["grads"] == pytest.approx(one.lines["grads"] / 8, rel=1e-6)
    assert eight.lines["optimizer"] == pytest.approx(one.lines["optimizer"] / 8, rel=1e-6)
    assert not one.fits and eight.fits


def test_a_config_that_cannot_fit_stops(capsys):
    assert main(["--config", "configs/search_r1_qwen3b_fsdp.yaml", "--config", FSDP2, "--gpus", "1", "--gpu-mem", "24"]) == 1
    err = capsys.readouterr().err
    assert "needs" in err and "more than 90% of 24 GiB" in err


def test_lora_targets_matching_no_module_stop():
    config = resolve_config(["--config", "configs/retrobust_llama13b_qlora.yaml",
                             "--model.init_args.lm.lora.target_modules", "[query, value]"])
    with pytest.raises(DryRunError, match=r"target_modules \['query', 'value'\] on meta-llama/Llama-2-13b-hf"):
        estimate(config, 1, 24)


def test_an_architecture_without_a_shipped_config_is_named():
    config = resolve_config(["--config", "configs/search_r1_qwen3b_fsdp.yaml", "--config", FSDP2,
                             "--model.init_args.lm.name_or_path", "org/Unknown-7B"])
    with pytest.raises(DryRunError, match=r"no config.json at .*model_configs/Unknown-7B"):
        estimate(config, 8, 80)
