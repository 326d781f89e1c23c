"""Wall time of a shipped config's training steps, as a user runs it (train.py's CLI, the config's own settings),
split into the parts the module reports: the first step (warm-up: allocations, first kernels) is timed but left
out of the median.

    python bench/step_time.py --config configs/score_stage1_arithmetic.yaml --steps 4
    python bench/step_time.py --config configs/score_stage1_arithmetic.yaml --steps 4 -- --data.init_args.batch_size 8

Arguments after ``--`` are passed to train.py as they are (overrides). No checkpoints, no logger files: the steps
only. With ``--profile-parts`` the time inside the LM calls is split by caller (rollout generation, log-prob
passes), from cProfile's cumulative times. The CPU flags and the load average are printed with the result:
compare numbers only within one run, or runs on the same idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)
os.chdir(ROOT)

import lightning as L  # noqa: E402
from lightning.pytorch.cli import SaveConfigCallback  # noqa: E402

from bench.machine import describe  # noqa: E402
from train import cli_main  # noqa: E402

PARTS = {"rollout generation (transformers generate)": ("generation/utils.py", "generate"),
         "log-prob passes (sequence_logprobs)": ("generation/logprobs.py", "sequence_logprobs"),
         "backward (torch.autograd.backward)": ("autograd/__init__.py", "backward")}


class StepTimer(L.Callback):
    def __init__(self):
        self.times, self.t0 = [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.t0)
        print(f"step {len(self.times)}: {self.times[-1]:.1f} s", flush=True)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--profile-parts", action="store_true")
    args = ap.parse_args(argv)
    cli = cli_main(["--config", args.config, "--trainer.max_steps", str(args.steps), "--trainer.logger", "false",
                    "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                    "--trainer.val_check_interval", "null", "--trainer.limit_val_batches", "0", *extra], run=False)
    timer = StepTimer()
    # no config.yaml in the working directory (without a logger, LightningCLI would write it there)
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, SaveConfigCallback)] + [timer]
    print(describe(), flush=True)
    if args.profile_parts:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    total = time.perf_counter() - t
    later = timer.times[1:] or timer.times
    print(f"\n{args.config} {' '.join(extra)}: {len(timer.times)} steps, first {timer.times[0]:.1f} s, "
          f"median of the rest {statistics.median(later):.1f} s (min {min(later):.1f}, max {max(later):.1f}); "
          f"fit {total:.1f} s in all")
    if args.profile_parts:
        prof.disable()
        stats = pstats.Stats(prof).stats
        for name, (file, fn) in PARTS.items():
            cum = sum(v[3] for k, v in stats.items() if k[0].endswith(file) and k[2] == fn)
            print(f"  {name:45s} {cum:7.1f} s  {100 * cum / total:5.1f}% of fit")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
