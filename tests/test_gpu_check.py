"""bench/gpu_check.py without a GPU: it lists a run for every GPU config and every trainable method, each run's
arguments resolve through the entry point to the tiny GPU setting it claims (SmolLM2 / MiniLM, one device on the
GPU accelerator, FSDP2 in bf16 or the 4-bit base), and without a GPU it stops with a clear message."""

from __future__ import annotations

import glob

import pytest
import yaml

from bench.gpu_check import LM, SAME_AS, methods, why
from train import cli_main

RUNS = methods("runs/gpu_check")


def test_every_gpu_config_and_method_has_a_run():
    used = {a for args in RUNS.values() for a in args if a.startswith("configs/") and a.endswith(".yaml")}
    gpu_configs = {p for p in glob.glob("configs/*.yaml") if p.endswith("_gpu.yaml") or "fsdp" in p or "qlora" in p}
    assert gpu_configs <= used | set(SAME_AS)
    assert set(SAME_AS.values()) <= set(RUNS)
    assert "configs/trainer/fsdp2.yaml" in used
    trainable = {"ContrastiveRetriever", "ReplugLSR", "RetRobust", "SearchR1", "SCoRe"}
    classes = set()
    for args in RUNS.values():
        for path in (a for a in args if a.startswith("configs/") and "trainer/" not in a):
            text = yaml.safe_load(open(path))
            base = text.get("config")
            model = (text.get("model") or yaml.safe_load(open(f"configs/{base}"))["model"])
            classes.add(model["class_path"].rsplit(".", 1)[-1])
    assert trainable <= classes


@pytest.mark.parametrize("name", sorted(RUNS))
def test_run_resolves_to_the_tiny_gpu_setting(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit", *RUNS[name], "--trainer.devices", "1", "--print_config"])
    assert stop.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer, hp = config["trainer"], config["model"]["init_args"]
    assert trainer["accelerator"] == "gpu" and str(trainer["devices"]) == "1"
    lm = hp.get("lm")
    # a model is named by a string, or by the name_or_path of a settings group (lm: LM, encoder: EncoderSettings)
    models = {v["name_or_path"] if isinstance(v, dict) else v
              for v in (hp.get(k) for k in ("model_name_or_path", "lm", "retriever", "encoder"))} - {None}
    search = hp["env"]["init_args"]["search"] if isinstance(hp.get("env"), dict) else hp.get("search")  # SearchR1's engine
    models |= {search["init_args"]["model_name_or_path"]} if isinstance(search, dict) else set()
    assert models and models <= {LM, "all-MiniLM-L6-v2"}, models
    if name == "retrobust_qlora":
        assert lm["load_in_4bit"] and lm["dtype"] == "bfloat16" and "PagedAdamW" in hp["optimizer"]["class_path"]
    else:
        strategy = trainer["strategy"]
        assert strategy["class_path"].endswith("FSDP2Strategy") and strategy["init_args"]["param_dtype"] == "bfloat16"


def test_without_a_gpu_it_stops_clearly(capsys):
    import torch

    from bench.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run")
    assert main(["--only", "dpr"]) == 2
    assert "no CUDA GPU visible" in capsys.readouterr().err


def test_arguments_are_checked_and_listed(capsys):
    from bench.gpu_check import main

    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    assert main(["--list", "--only", "score_stage2", "--out", "/x"]) == 0
    out = capsys.readouterr().out
    assert "--model.init_args.init_from /x/score_stage1/score_stage1_math_gpu/checkpoints/best.ckpt" in out


def test_failure_reason_is_the_last_error_line():
    assert why("loading\nTraceback (most recent call last):\n  x\nRuntimeError: No backend type associated with "
               "device type cpu\n") == "RuntimeError: No backend type associated with device type cpu"
    assert why("") == "no output"
