"""Every shipped config validates against the entry point; presets layer; interpolation sees overrides."""

import glob

import pytest
import yaml

from train import cli_main

EXPERIMENTS = sorted(p for p in glob.glob("configs/*.yaml"))
PRESETS = sorted(glob.glob("configs/trainer/*.yaml"))


def print_config(args, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_config_validates(path, capsys):
    config = print_config(["--config", path], capsys)
    assert config["model"]["class_path"] and config["data"]["class_path"]


# every preset on DPR; the FSDP2 presets on each of the other trainable methods (training.sharding)
FSDP2_PRESETS = ["configs/trainer/fsdp2.yaml", "configs/trainer/fsdp2_cpu.yaml"]
SHARDED_METHODS = ["configs/replug_lsr_nq.yaml", "configs/retrobust_nq.yaml", "configs/score_stage1_arithmetic.yaml",
                   "configs/search_r1_grpo_nq.yaml"]


@pytest.mark.parametrize("experiment, preset", [("configs/dpr_scifact.yaml", p) for p in PRESETS]
                         + [(e, p) for e in SHARDED_METHODS for p in FSDP2_PRESETS])
def test_trainer_preset_layers_on_trainable_methods(experiment, preset, capsys):
    config = print_config(["--config", experiment, "--config", preset], capsys)
    expected = yaml.safe_load(open(preset))["trainer"]
    for key in ("precision", "accelerator", "devices"):   # the preset's, not the experiment's
        if key in expected:
            assert config["trainer"][key] == expected[key], key
    if isinstance(expected.get("strategy"), dict):  # the preset's strategy and its options survive the layering
        assert config["trainer"]["strategy"]["class_path"] == expected["strategy"]["class_path"]
        for key, value in expected["strategy"].get("init_args", {}).items():
            if not isinstance(value, list):   # (FSDP1's class lists are printed by their short import path)
                assert config["trainer"]["strategy"]["init_args"][key] == value, key


def test_interpolation_sees_command_line_overrides(capsys):
    config = print_config(["--config", "configs/dpr_scifact.yaml", "--seed_everything", "7"], capsys)
    assert config["data"]["init_args"]["seed"] == 7


def test_overrides_reach_nested_init_args(capsys):
    config = print_config(["--config", "configs/dpr_scifact.yaml", "--model.init_args.loss.init_args.temperature", "0.1",
                           "--model.init_args.optimizer.init_args.lr", "1e-4", "--trainer.max_epochs", "9"], capsys)
    assert config["model"]["init_args"]["loss"]["init_args"]["temperature"] == 0.1
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-4
    assert config["trainer"]["max_epochs"] == 9


def test_bad_config_value_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", "configs/dpr_scifact.yaml", "--model.init_args.loss.init_args.temperature", "warm",
                  "--print_config"])
    assert exit_.value.code == 2
    assert "temperature" in capsys.readouterr().err


def test_unreachable_hub_name_gives_a_clear_error():
    from transformers import AutoModel

    from training.models import from_pretrained

    with pytest.raises(OSError, match="not a local directory.*pass the folder path instead"):
        from_pretrained(AutoModel, "no-such-org/no-such-model")


def _documented_preset_commands() -> list[list[str]]:
    """The ``python train.py ...`` commands in the configs' header comments that layer a trainer preset."""
    import re
    import shlex

    commands = []
    for path in EXPERIMENTS + PRESETS:
        for line in open(path):
            match = re.match(r"#\s+python train\.py (.*configs/trainer/.*)", line)
            if match:
                args = shlex.split(match.group(1).split("  #")[0])
                commands.append(args[1:] if args[0] in ("fit", "validate", "test", "predict") else args)
    return commands


@pytest.mark.parametrize("args", _documented_preset_commands(), ids=" ".join)
def test_documented_preset_commands_resolve(args, capsys):
    preset = next(a for a in args if a.startswith("configs/trainer/"))
    config = print_config(args, capsys)
    strategy = yaml.safe_load(open(preset))["trainer"].get("strategy")
    if isinstance(strategy, dict):  # the preset's strategy is the one used
        assert config["trainer"]["strategy"]["class_path"] == strategy["class_path"]


@pytest.mark.parametrize("path", EXPERIMENTS + sorted(glob.glob("configs/families/*.yaml")))
def test_experiments_take_their_strategy_from_a_preset(path):
    """Sharding is the preset's to say (configs/trainer/fsdp2.yaml, layered after the experiment): an experiment
    file that repeats the strategy block drifts from the preset."""
    trainer = yaml.safe_load(open(path)).get("trainer") or {}
    assert "strategy" not in trainer and "trainer.strategy" not in yaml.safe_load(open(path))
