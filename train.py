"""The one entry point: ``python train.py --config configs/<experiment>.yaml [overrides]``.

Without a subcommand, a trainable method is fit and then tested with its best checkpoint (and
exported, if it can be); an evaluation-only method (``evaluation_only = True``) is tested. The
LightningCLI subcommands ``fit``, ``validate``, ``test`` and ``predict`` work as usual. Configs are
parsed with OmegaConf, after the command line, so ``${...}`` interpolations see overrides.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jsonargparse import set_parsing_settings  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class CLI(LightningCLI):
    def __init__(self, *args, default_run: bool = False, **kwargs):
        self.default_run = default_run
        super().__init__(*args, **kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        if not self.default_run:
            return super()._run_subcommand(subcommand)
        if getattr(self.model, "evaluation_only", False):
            self.trainer.test(self.model, datamodule=self.datamodule)
            return
        super()._run_subcommand("fit")
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        rank_zero_info(f"Testing {'checkpoint ' + best if best else 'the final weights (no checkpoint saved)'}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        if hasattr(self.model, "export") and self.trainer.is_global_zero:
            target = Path(self.trainer.log_dir or ".") / "export"
            self.model.export(target)
            rank_zero_info(f"Exported the trained model to {target}")


def cli_main(args: list[str] | None = None, run: bool = True) -> CLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, without the program name."""
    args = list(sys.argv[1:] if args is None else args)
    wants_help = any(a in ("-h", "--help") for a in args[:1])
    default_run = bool(args) and args[0] not in SUBCOMMANDS and not wants_help and run
    if default_run:
        # Parse as `fit`; `_run_subcommand` decides whether to fit+test or only test.
        args = ["fit", *args]
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # `args` is always passed explicitly (see above); LightningCLI's warning about sys.argv is moot.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return CLI(
        args=args,
        run=run,
        default_run=default_run,
        parser_kwargs={"parser_mode": "omegaconf+"},
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    cli_main()
