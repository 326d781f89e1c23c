"""Dry run of a GPU config without a GPU: will it fit on N cards of M GiB?

The config is resolved through the entry point (``train.py ... --print_config``: base configs, presets and
overrides as a run would see them); the LM it names is built on the meta device from the ``config.json`` shipped
under ``configs/model_configs/<name>/`` (no weights), LoRA is applied with peft (a ``target_modules`` entry that
matches no module stops here), and the FSDP2 plan (training.sharding.transformer_blocks: one unit per
block, then the root) is laid over the N processes. Printed per GPU, in GiB:

  params      trainable (the config's dtype) + frozen (dtype, or NF4 with double quantisation: ~0.52 byte a
              weight of the blocks' linear layers) + a copy-mode KL reference + the retriever of a search tool;
              / N under FSDP2, whole on every GPU otherwise
  grads       trainable parameters, in their dtype, / N under FSDP2
  optimizer   Adam(W): 2 states in the parameters' dtype; bitsandbytes PagedAdamW(32bit): 8 bytes, *8bit: 2 bytes
  gathered    FSDP2 only: two blocks' parameters all-gathered in param_dtype (the current one and the prefetch)
  activations one micro-batch of micro_batch_size rows x seq tokens: with checkpointing each block's input
              (b s h x 2 bytes) plus one block's inner tensors (b s (10 h + 4 i) x 2 bytes); without, the latter for
              every block; plus the logits over the scored tokens (b x tokens x V x 10 bytes: bf16, their fp32 copy
              and its gradient). Attention scores are not counted (SDPA / flash attention keeps them out of memory).
  rollout     RL methods: the policy whole (sharding.full_parameters gathers it in param_dtype for generation)
              and the KV cache of the rank's rollouts (rows x seq x layers x 2 x kv_heads x head_dim x 2 bytes)

peak = params + grads + optimizer + max(gathered + activations, rollout); the run stops (exit 1) when the peak
exceeds 90% of the card (the CUDA context, the allocator's fragmentation and NCCL buffers take the rest).

    python bench/dry_run.py --config configs/search_r1_qwen3b_fsdp.yaml --gpus 8 --gpu-mem 80
    python bench/dry_run.py --config configs/retrobust_llama13b_qlora.yaml --gpus 1 --gpu-mem 24
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL_CONFIGS = ROOT / "configs" / "model_configs"
GIB = 1024 ** 3
HEADROOM = 0.9
RL_METHODS = ("SCoRe", "SearchR1")


class DryRunError(ValueError):
    """The config cannot run as written (no fit, LoRA targets matching nothing, an unknown architecture)."""


def resolve_config(args: list[str]) -> dict:
    """The config a run would see: ``train.py fit <args> --print_config`` parsed back."""
    import yaml

    from train import cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli_main(["fit", *args, "--print_config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise DryRunError(f"{args}: the config does not validate (train.py --print_config exit {stop.code})")
    return yaml.safe_load(out.getvalue())


def model_config_dir(name: str) -> Path:
    """The folder holding ``name``'s config.json: a local folder, or configs/model_configs/<last part of name>."""
    if (Path(name) / "config.json").is_file():
        return Path(name)
    shipped = MODEL_CONFIGS / name.rstrip("/").split("/")[-1]
    if not (shipped / "config.json").is_file():
        raise DryRunError(f"model '{name}': no config.json at {shipped}; add the architecture's config.json there "
                          "(a few KB, from the model's hub page)")
    return shipped


def meta_model(name: str, lora: dict | None, encoder: bool = False):
    """The model built on the meta device (no memory), LoRA applied as training.models would."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_config_dir(name))
    with torch.device("meta"):
        model = (AutoModel if encoder else AutoModelForCausalLM).from_config(config)
    if lora is not None:
        from training.models import apply_lora

        try:
            model = apply_lora(model, **lora)
        except ValueError as err:   # peft: "Target modules {...} not found in the base model"
            raise DryRunError(f"model.init_args.lora.target_modules {lora.get('target_modules')} on {name} "
                              f"({type(model).__name__}): {err}") from None
    return model, config


def dtype_bytes(name: str | None, default: int = 4) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, None: default}.get(name, default)


def optimizer_bytes(class_path: str, param_bytes: int) -> float:
    name = class_path.rsplit(".", 1)[-1].lower()
    if class_path.startswith("bitsandbytes"):
        return 2.0 if "8bit" in name else 8.0
    if name == "sgd":
        return float(param_bytes)   # momentum buffer (none without momentum: an upper bound)
    return 2.0 * param_bytes        # Adam, AdamW: exp_avg and exp_avg_sq


@dataclass
class Report:
    config: str
    gpus: int
    gpu_mem: float
    sharded: bool
    lines: dict[str, float] = field(default_factory=dict)     # GiB per GPU
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        g = self.lines
        return g["params"] + g["grads"] + g["optimizer"] + max(g["gathered"] + g["activations"], g["rollout"])

    def text(self) -> str:
        rows = [f"{self.config}: {self.gpus} GPU(s) x {self.gpu_mem:g} GiB, "
                f"{'FSDP2 over ' + str(self.gpus) if self.sharded else 'not sharded (whole model on each GPU)'}"]
        rows += [f"  {k:<12}{v:8.2f} GiB" for k, v in self.lines.items()]
        rows.append(f"  {'peak':<12}{self.peak:8.2f} GiB of {HEADROOM * self.gpu_mem:.1f} usable "
                    f"({'fits' if self.fits else 'DOES NOT FIT'})")
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)

    @property
    def fits(self) -> bool:
        return self.peak <= HEADROOM * self.gpu_mem


def state_bytes(model, weight_bytes: int, four_bit: bool) -> tuple[float, float, int]:
    """(trainable bytes, frozen bytes, trainable count): NF4 with double quantisation for the frozen 2-D weights of
    the blocks of a 4-bit base (0.5 byte + an 8-bit absmax per 64 + an fp32 one per 256 blocks of 64)."""
    from training.sharding import transformer_blocks

    in_blocks = {id(p) for b in transformer_blocks(model) for p in b.parameters()}
    trainable = frozen = 0.0
    for p in model.parameters():
        if p.requires_grad:
            trainable += p.numel() * weight_bytes
        elif four_bit and p.ndim == 2 and id(p) in in_blocks:
            frozen += p.numel() * (0.5 + 1 / 64 + 4 / (64 * 256))
        else:
            frozen += p.numel() * weight_bytes
    return trainable, frozen, sum(p.numel() for p in model.parameters() if p.requires_grad)


def activation_bytes(cfg, b: int, seq: int, scored: int, checkpointing: bool) -> float:
    """One micro-batch: each block's input (checkpointing) or inner tensors (10 h + 4 i values a token, bf16),
    plus the logits over the scored tokens (bf16, their fp32 copy and its gradient: ~10 bytes a value)."""
    inner = b * seq * (10 * cfg.hidden_size + 4 * cfg.intermediate_size) * 2
    blocks = (cfg.num_hidden_layers * b * seq * cfg.hidden_size * 2 + inner) if checkpointing else cfg.num_hidden_layers * inner
    return blocks + b * scored * cfg.vocab_size * 10


def kv_cache_bytes(cfg, rows: int, seq: int) -> float:
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return rows * seq * cfg.num_hidden_layers * 2 * kv_heads * head_dim * 2


def flat_settings(hp: dict) -> dict:
    """A model's init_args with the grouped settings (``lm``, ``sampling``, ``loss``, ``updates``, ``objective``)
    flattened to the names the estimate reads (``model_name_or_path``, ``lora``, ``group_size``, ``kl_coef``, ...) and
    the search engine of an ``env``."""
    out = dict(hp)
    lm = hp.get("lm")
    if isinstance(lm, dict) and "name_or_path" in lm:
        out.update({k: v for k, v in lm.items() if k != "name_or_path"}, model_name_or_path=lm["name_or_path"])
    for group in ("sampling", "loss", "updates", "objective"):
        if isinstance(hp.get(group), dict):
            out.update(hp[group])
    if isinstance(hp.get("env"), dict):
        out["search"] = (hp["env"].get("init_args") or {}).get("search")
    return out


def estimate(config: dict, gpus: int, gpu_mem: float, prompt_tokens: int = 256, name: str = "config") -> Report:
    """The per-GPU memory of ``config`` (a resolved config dict) on ``gpus`` cards of ``gpu_mem`` GiB."""
    from training.sharding import transformer_blocks

    model_cfg, trainer = config["model"], config["trainer"]
    method, hp = model_cfg["class_path"].rsplit(".", 1)[-1], flat_settings(model_cfg["init_args"])
    if "model_name_or_path" not in hp:
        raise DryRunError(f"{name}: {method} is not covered by the dry run (causal-LM methods: RetRobust, SearchR1, SCoRe)")
    strategy = trainer.get("strategy")
    sharded = isinstance(strategy, dict) and strategy.get("class_path", "").endswith("FSDP2Strategy")
    shard_opts = strategy.get("init_args", {}) if sharded else {}
    n = gpus if sharded else 1
    four_bit = bool(hp.get("load_in_4bit"))
    if four_bit and sharded:
        raise DryRunError(f"{name}: load_in_4bit with FSDP2: a 4-bit base cannot be sharded "
                          "(training.sharding.refuse_quantized)")
    report = Report(name, gpus, gpu_mem, sharded)
    model, cfg = meta_model(hp["model_name_or_path"], hp.get("lora"))
    # peft's k-bit preparation keeps what is not quantised (and the adapters) in fp32
    weight_bytes = 4 if four_bit else dtype_bytes(hp.get("dtype"))
    compute = 2 if (shard_opts.get("param_dtype") in ("bfloat16", "float16")
                    or "16" in str(trainer.get("precision"))) else weight_bytes
    trainable, frozen, trainable_count = state_bytes(model, weight_bytes, four_bit)
    if trainable_count == 0:
        raise DryRunError(f"{name}: no trainable parameter (check model.init_args.lora)")
    reference = search = 0.0
    uses_kl = (hp.get("beta1", 0) or hp.get("beta2", 0)) if method == "SCoRe" else hp.get("kl_coef", 0)
    if method in RL_METHODS and uses_kl and hp.get("lora") is None:
        reference = trainable + frozen            # a frozen copy of the policy (rl.policy.ReferencePolicy "copy")
        report.notes.append("KL reference: a frozen copy of the policy")
    search_cfg = hp["search"].get("init_args", {}) if isinstance(hp.get("search"), dict) else {}
    if search_cfg.get("model_name_or_path"):
        encoder, _ = meta_model(search_cfg["model_name_or_path"], None, encoder=True)
        search = sum(p.numel() for p in encoder.parameters()) * 4      # fp32, whole on every GPU
        report.notes.append(f"search encoder {search_cfg['model_name_or_path']} whole on each GPU (corpus "
                            "embeddings not counted)")
    b, data = int(hp.get("micro_batch_size") or 1), config.get("data", {}).get("init_args", {})
    if method in RL_METHODS:
        response = int(hp.get("max_response_tokens") or 1024)
        seq, scored = prompt_tokens + response, response
        rows = math.ceil(int(data.get("batch_size") or 1) * int(hp.get("group_size") or 1) / n)
        b = min(b, rows)    # a rank's micro-batch holds at most its share of the rollouts
    else:
        seq, scored, rows = int(data.get("max_length") or 1024), 64, 0   # the answer's tokens carry the loss
    checkpointing = bool(shard_opts.get("activation_checkpointing") or hp.get("gradient_checkpointing"))
    blocks = transformer_blocks(model)
    block_bytes = max((sum(p.numel() for p in blk.parameters()) for blk in blocks), default=0) * compute
    total_params = sum(p.numel() for p in model.parameters())
    rollout = total_params * compute + kv_cache_bytes(cfg, rows, seq) if method in RL_METHODS else 0.0
    optimizer = hp.get("optimizer", {}).get("class_path", "torch.optim.AdamW")
    report.lines = {"params": (trainable + frozen + reference) / n / GIB + search / GIB,
                    "grads": trainable / n / GIB,
                    "optimizer": trainable_count * optimizer_bytes(optimizer, weight_bytes) / n / GIB,
                    "gathered": 2 * block_bytes / GIB if sharded else 0.0,
                    "activations": activation_bytes(cfg, b, seq, scored, checkpointing) / GIB,
                    "rollout": rollout / GIB}
    report.notes.insert(0, f"{hp['model_name_or_path']}: {total_params / 1e9:.2f}B parameters, {trainable_count / 1e6:.1f}M "
                           f"trainable{', 4-bit base' if four_bit else ''}; {len(blocks)} blocks; micro-batch "
                           f"{b} x {seq} tokens, activation checkpointing {'on' if checkpointing else 'off'}"
                           + (f"; rollout: {rows} rows per GPU" if rows else ""))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="as train.py's --config (repeatable)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in all (nodes x GPUs per node)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length of an RL rollout (default 256)")
    args, overrides = parser.parse_known_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be >= 1")
    cli_args = [a for c in args.config for a in ("--config", c)] + overrides
    try:
        report = estimate(resolve_config(cli_args), args.gpus, args.gpu_mem, args.prompt_tokens, " + ".join(args.config))
    except DryRunError as err:
        print(f"dry run: {err}", file=sys.stderr)
        return 1
    print(report.text())
    if not report.fits:
        print(f"dry run: {report.config} needs {report.peak:.1f} GiB per GPU, more than {HEADROOM:.0%} of "
              f"{args.gpu_mem:g} GiB: use more GPUs or a smaller micro_batch_size (and activation checkpointing, if off)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
