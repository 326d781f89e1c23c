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


@pytest.mark.parametrize("preset", PRESETS)
def test_trainer_preset_layers_on_dpr(preset, capsys):
    config = print_config(["--config", "configs/dpr_scifact.yaml", "--config", preset], capsys)
    expected = yaml.safe_load(open(preset))["trainer"]
    assert config["trainer"]["precision"] == expected["precision"]
    if isinstance(expected.get("strategy"), dict):  # the preset's strategy class survives the layering
        assert config["trainer"]["strategy"]["class_path"] == expected["strategy"]["class_path"]


def test_interpolation_sees_command_line_overrides(capsys):
    config = print_config(["--config", "configs/dpr_scifact.yaml", "--seed_everything", "7"], capsys)
    assert config["data"]["init_args"]["seed"] == 7


def test_overrides_reach_nested_init_args(capsys):
    config = print_config(["--config", "configs/dpr_scifact.yaml", "--model.init_args.temperature", "0.1",
                           "--model.init_args.optimizer.init_args.lr", "1e-4", "--trainer.max_epochs", "9"], capsys)
    assert config["model"]["init_args"]["temperature"] == 0.1
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-4
    assert config["trainer"]["max_epochs"] == 9


def test_bad_config_value_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", "configs/dpr_scifact.yaml", "--model.init_args.temperature", "warm",
                  "--print_config"])
    assert exit_.value.code == 2
    assert "temperature" in capsys.readouterr().err


def test_unreachable_hub_name_gives_a_clear_error():
    from transformers import AutoModel

    from retrieval.encoders import from_pretrained

    with pytest.raises(OSError, match="not a local directory.*pass the folder path instead"):
        from_pretrained(AutoModel, "no-such-org/no-such-model")
