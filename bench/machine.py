"""The machine a benchmark ran on, printed with its results: the CPU model, the vector flags that decide the
LM and encoder precision (training.precision.cpu_has_fast_bf16), cores, torch threads and the load average
(the project's machines are shared: a ratio is only meaningful within one run)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> str:
    from training.precision import cpu_has_fast_bf16

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(info.split())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU {model}; {os.cpu_count()} cores; flags {' '.join(f for f in FLAGS if f in flags) or 'none of ' + str(FLAGS)}; "
            f"native bf16 {cpu_has_fast_bf16()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load}")
