"""The one entry point: ``python train.py --config configs/<experiment>.yaml [overrides]``.

Without a subcommand, a trainable method is fit and then tested with its best checkpoint (and
exported, if it can be); an evaluation-only method (``evaluation_only = True``) is tested. The
LightningCLI subcommands ``fit``, ``validate``, ``test`` and ``predict`` work as usual. Configs are
parsed with OmegaConf, after the command line, so ``${...}`` interpolations see overrides.

Every training run gets a learning-rate monitor (the LR is in TensorBoard), and progress lines with rate
and ETA when the output is not a terminal (a log file, a batch job). Bad input stops the run with one
short line naming what to fix as the last thing printed (``RAGKIT_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import glob
import linecache
import logging
import os
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent
TRACEBACK_ENV = "RAGKIT_TRACEBACK"


# Start-up noise (bitsandbytes' optional kernel, Lightning's tips and its manual-optimisation checkpoint
# warning; training/quiet.py says why each is harmless), silenced before the imports that print it.
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()

from jsonargparse import DefaultHelpFormatter, set_parsing_settings  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from callbacks.console import readable_console  # noqa: E402
from callbacks.atomic_checkpoint import install as atomic_checkpoints  # noqa: E402
from callbacks.divergence import DivergenceGuard  # noqa: E402
from callbacks.progress import LogProgress  # noqa: E402
from callbacks.run_folders import RunFolders  # noqa: E402

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# every package of the project (the three layers, tests/test_layers.py): their INFO lines reach the console
PACKAGES = ("lightning_modules", "datamodules", "callbacks", "retrieval", "generation", "rl", "tasks", "training")

DESCRIPTION = """\
Train and evaluate a method from a YAML config.

  python train.py --config configs/dpr_scifact.yaml                 # default: fit, test the best checkpoint, export
  python train.py --config configs/dpr_scifact.yaml --model.init_args.temperature 0.1   # any override
  python train.py test --config configs/dpr_scifact.yaml --ckpt_path <ckpt>          # or fit / validate / predict
  python train.py fit --config configs/dpr_scifact.yaml --model.help lightning_modules.ContrastiveRetriever
  python train.py fit --config configs/dpr_scifact.yaml --print_config                    # the merged config

Without a subcommand a trainable method is fit, then tested with its best checkpoint and exported to
<log_dir>/export; an evaluation-only method is tested. Trainer presets layer last (later files
override), e.g. --config configs/trainer/debug.yaml (2 steps, no logger: try any config in seconds) or
--config configs/trainer/fsdp2.yaml. Subcommand options: python train.py fit --help.
"""


def _epilog() -> str:
    import textwrap

    names = lambda pattern: " ".join(Path(p).stem for p in sorted(glob.glob(str(ROOT / pattern))))  # noqa: E731
    wrap = lambda text: textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    return (f"shipped configs (configs/<name>.yaml):\n{wrap(names('configs/*.yaml'))}\n"
            f"trainer presets (configs/trainer/<name>.yaml, layered last):\n{wrap(names('configs/trainer/*.yaml'))}")


# -- short errors ----------------------------------------------------------------------------------------------
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "tip: ")


def short_error(message: str) -> str:
    """The useful part of a jsonargparse error, in one line: where (``model (ContrastiveRetriever), key
    "temperature"``) and what (``Expected a <class 'float'>. Got value: warm``)."""
    keys, classes, problems = [], [], []
    for raw in message.splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line or line.startswith(_NOISE):
            continue
        key = re.fullmatch(r'Parser key "([^"]+)":?', line)
        klass = re.fullmatch(r"Problem with given class_path '([^']+)':?", line)
        if key:
            keys.append(key.group(1))
        elif klass:
            classes.append(klass.group(1))
        else:
            problems.append(line)
    text = problems[0] if problems else message.strip().splitlines()[-1]
    if classes and keys and "is not accepted" in text:
        text += f" (the options: python train.py fit --{keys[0]}.help {classes[-1]})"
    where = ".".join(keys) + (f" ({classes[-1]})" if classes else "")
    return f"{where}: {text}" if where else text


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the description's and epilog's line breaks (the examples)."""


class Parser(LightningArgumentParser):
    """A config error prints two short lines, the useful one last, instead of a 50-line usage dump."""

    def error(self, message: str, ex: Exception | None = None):
        from jsonargparse._common import debug_mode_active  # noqa: PLC0415

        if not self.exit_on_error or debug_mode_active() or os.environ.get(TRACEBACK_ENV):
            return super().error(message, ex)
        sys.stderr.write(f"usage: python train.py [fit|validate|test|predict] --config CONFIG [--key value ...]  "
                         f"(python train.py --help)\nerror: {short_error(message)}\n")
        sys.exit(2)


def check_yaml_files(args: list[str]) -> None:
    """Parse every ``--config`` file here first: jsonargparse reports a YAML syntax error in
    ``"<unicode string>"``, not in the file that has it."""
    import yaml

    paths = [b for a, b in zip(args, args[1:]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if not Path(path).is_file():
            sys.stderr.write(f"error: --config {path}: file not found\n")
            sys.exit(2)
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            sys.stderr.write(f"error: {path}{where}: YAML syntax error: {problem}\n")
            sys.exit(2)


def _unwrap(err: BaseException) -> BaseException:
    """The exception a class's ``__init__`` raised, out of jsonargparse's wrapper (a ValueError that lists
    every Union subtype and dumps the whole Namespace)."""
    while (isinstance(err, ValueError) and err.__cause__ is not None
           and ("Given value" in str(err) or "Problem with given class_path" in str(err))):
        err = err.__cause__
    return err


def _raised_by_project(err: BaseException) -> bool:
    """Raised by a ``raise`` statement of this project's code (a deliberate message), not inside a library
    nor by a library call failing in our code (a bug to debug, which keeps its traceback)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if not path.is_relative_to(ROOT) or ".venv" in path.parts:
        return False
    positions = list(tb.tb_frame.f_code.co_positions())
    line, _, col, _ = positions[tb.tb_lasti // 2] if tb.tb_lasti // 2 < len(positions) else (None,) * 4
    return line is not None and col is not None and linecache.getline(str(path), line)[col:].startswith("raise")


# -- the CLI -----------------------------------------------------------------------------------------------------
class CLI(LightningCLI):
    def __init__(self, *args, default_run: bool = False, **kwargs):
        self.default_run = default_run
        super().__init__(*args, **kwargs)

    def before_fit(self) -> None:
        # Every training run logs its learning rate (README promises it in TensorBoard); a YAML list of
        # callbacks replaces the defaults' whole, so this is added here rather than in the configs.
        callbacks = self.trainer.callbacks
        if self.trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step"))

    def _instantiate_trainer(self, config: dict, callbacks: list):
        # `enable_checkpointing: false` from a later file (the debug preset) wins over the checkpoint callbacks
        # an experiment lists, as any later file does; Lightning would refuse the pair
        if "callbacks" in config:
            config["callbacks"] = without_checkpoints(config)
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, LogProgress) for c in trainer.callbacks):
            trainer.callbacks.append(LogProgress())
        readable_console(trainer)  # a step count when epochs are unbounded; one test table (callbacks/console.py)
        # a NaN / infinite loss or gradient stops the run before it is applied, tested or exported
        if not any(isinstance(c, DivergenceGuard) for c in trainer.callbacks):
            trainer.callbacks.append(DivergenceGuard())
        atomic_checkpoints(trainer)  # written beside the final name, fsync'ed, renamed
        if not any(isinstance(c, RunFolders) for c in trainer.callbacks):
            trainer.callbacks.append(RunFolders())  # no empty version folder from a failed run; <name>/latest
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model (class and options) by the checkpoint's hyperparameters, so a
        changed option was dropped silently and another method's checkpoint swapped the class. Here the config
        wins, each option it changes is named with both values, and another method's checkpoint is refused;
        a missing, empty, truncated or folder checkpoint (``--ckpt_path``, ``init_from``) is named before
        anything is built."""
        check_start_files(self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        if not self.default_run:
            super()._run_subcommand(subcommand)
            if subcommand == "fit":
                self._check_trained()
            return
        if getattr(self.model, "evaluation_only", False):
            self.trainer.test(self.model, datamodule=self.datamodule)
            return
        super()._run_subcommand("fit")
        self._check_trained()
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        rank_zero_info(f"Testing {'checkpoint ' + best if best else 'the final weights (no checkpoint saved)'}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        if hasattr(self.model, "export"):
            from training.sharding import export_whole
            from training.atomic_files import export_atomically

            # every rank: log_dir is a broadcast, and a sharded model is gathered before rank 0 writes it
            target = Path(self.trainer.log_dir or ".") / "export"
            target = export_atomically(target, lambda folder: export_whole(self.model, folder),
                                       writer=self.trainer.is_global_zero)
            rank_zero_info(f"Exported the trained model to {target}")

    def _check_trained(self) -> None:
        """A fit that ran no training step must not go on to test and export the untrained model as "the
        trained model" (Lightning only notes "No training batches" and returns)."""
        trainer = self.trainer
        if trainer.global_step > 0 or trainer.interrupted:
            return
        asked_for_none = trainer.max_steps == 0 or trainer.max_epochs == 0 or trainer.limit_train_batches == 0
        if not asked_for_none:
            raise RuntimeError(
                f"no training step ran: the training dataloader gave {trainer.num_training_batches} batches "
                "(a batch size larger than the training set, with drop_last?); nothing was tested or exported")


def without_checkpoints(trainer_config: dict) -> list | None:
    """The trainer's ``callbacks`` without ``ModelCheckpoint`` when ``enable_checkpointing`` is false (each one
    dropped is named), else as given."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = trainer_config.get("callbacks")
    if trainer_config.get("enable_checkpointing") is not False or not isinstance(callbacks, list):
        return callbacks
    dropped = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if dropped:
        rank_zero_info(f"trainer.enable_checkpointing is false: {len(dropped)} ModelCheckpoint callback(s) of the "
                       "config not used")
    return [c for c in callbacks if not isinstance(c, ModelCheckpoint)]


def check_start_files(config) -> None:
    """The checkpoints a run starts from, checked before the model is built (training.checkpoint_checks)."""
    from lightning.pytorch.utilities import rank_zero_warn

    from training.checkpoint_checks import (LIGHTNING_NAMES, CheckpointError, check_checkpoint_path,
                                            read_hyperparameters, reconcile)

    sub = config.get("subcommand")
    section = config[sub] if sub else config
    model = section.get("model")
    model = model.as_dict() if hasattr(model, "as_dict") else dict(model or {})
    ckpt_path = section.get("ckpt_path")
    if ckpt_path and str(ckpt_path) not in LIGHTNING_NAMES:
        path = check_checkpoint_path(ckpt_path, "--ckpt_path")
        if path.is_dir() and not reads_sharded_checkpoints(section.get("trainer") or {}):
            raise CheckpointError(f"--ckpt_path {ckpt_path}: a sharded checkpoint (a folder, one shard per rank), "
                                  "which only a sharded strategy reads; add --config configs/trainer/fsdp2.yaml "
                                  "(GPUs) or configs/trainer/fsdp2_cpu.yaml (CPU), any number of processes")
        changed = reconcile(model, read_hyperparameters(path, "--ckpt_path"), ckpt_path)
        if changed:
            rank_zero_warn(f"--ckpt_path {ckpt_path}: the config sets {len(changed)} model option(s) differently from "
                           "the checkpoint; the config's values are used:\n  " + "\n  ".join(changed))
    elif (model.get("init_args") or {}).get("init_from"):
        # a resumed run takes its weights from --ckpt_path, not init_from
        # a file, or the folder an FSDP2 run writes (the module reads either, whatever this run's strategy)
        check_checkpoint_path(model["init_args"]["init_from"], "model.init_args.init_from")


def reads_sharded_checkpoints(trainer: dict) -> bool:
    """Whether the configured strategy loads a sharded checkpoint folder (FSDP2 / ModelParallelStrategy, FSDP);
    any other strategy calls ``torch.load`` on it and fails with IsADirectoryError."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    from training.checkpoint_checks import import_class

    strategy = trainer.get("strategy")
    strategy = strategy.as_dict() if hasattr(strategy, "as_dict") else strategy
    if isinstance(strategy, dict):
        strategy = import_class(str(strategy.get("class_path")))
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    if not isinstance(strategy, type):
        strategy = type(strategy)
    return issubclass(strategy, (FSDPStrategy, ModelParallelStrategy))


def _configure_logging() -> None:
    """Our packages' INFO lines (chosen precision, skipped data) reach the console like Lightning's own."""
    if logging.getLogger().handlers:
        return
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def cli_main(args: list[str] | None = None, run: bool = True) -> CLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, without the program name."""
    args = list(sys.argv[1:] if args is None else args)
    wants_help = any(a in ("-h", "--help") for a in args[:1])
    default_run = bool(args) and args[0] not in SUBCOMMANDS and not wants_help and run
    if default_run:
        # Parse as `fit`; `_run_subcommand` decides whether to fit+test or only test.
        args = ["fit", *args]
    check_yaml_files(args)
    _configure_logging()
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # `args` is always passed explicitly (see above); LightningCLI's warning about sys.argv is moot.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        return CLI(
            args=args,
            run=run,
            default_run=default_run,
            parser_class=Parser,
            parser_kwargs={"parser_mode": "omegaconf+", "description": DESCRIPTION, "epilog": _epilog(),
                           "formatter_class": HelpFormatter},
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
        )
    except ValueError as err:
        cause = _unwrap(err)
        if cause is err:
            raise
        raise cause.with_traceback(cause.__traceback__) from None


def main(args: list[str] | None = None) -> None:
    """``cli_main`` for the command line: an error raised by this project's code on purpose (bad data, a
    missing file, an impossible setting) is printed as one line, last; anything else keeps its traceback."""
    try:
        cli_main(args)
    except Exception as err:  # noqa: BLE001
        from training.disk_full import describe_disk_full

        full = describe_disk_full(err)  # a full disk is the user's to fix, wherever it was found
        if full is not None and not os.environ.get(TRACEBACK_ENV):
            sys.stderr.write(f"({TRACEBACK_ENV}=1 shows the traceback)\nerror: OSError: {full}\n")
            sys.exit(1)
        deliberate = isinstance(err, (ValueError, OSError, RuntimeError)) and _raised_by_project(err)
        if os.environ.get(TRACEBACK_ENV) or not deliberate:
            raise
        sys.stderr.write(f"({TRACEBACK_ENV}=1 shows the traceback)\nerror: {type(err).__name__}: {err}\n")
        sys.exit(1)


def die_with_launcher() -> None:
    """A rank started by Lightning's launcher (rank 0 runs this script again with ``LOCAL_RANK`` 1, 2...) is
    killed by the kernel when its parent exits (Linux ``PR_SET_PDEATHSIG``): otherwise a rank 0 that fails (a
    ``MASTER_PORT`` already taken by another run) leaves rank 1 waiting on that port, re-parented to init."""
    if os.environ.get("LOCAL_RANK", "0") == "0" or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
        return
    if parent == 1 or os.getppid() != parent:  # the launcher is already gone
        sys.exit(1)


if __name__ == "__main__":
    die_with_launcher()
    main()
