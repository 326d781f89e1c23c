"""RetRobust (Yoran et al., 2024): fine-tune a causal LM (QLoRA: 4-bit NF4 base + LoRA adapters, or plain
LoRA) to answer from a relevant retrieved passage and to ignore an irrelevant one.

One training step, on a batch of (prompt with one top-1 / low-rank / random passage, gold answer):
  1. loss:  L = -sum_t m_t log p(x_t | x_<t) / sum_t m_t, with m_t = 1 on the answer's tokens only
            (``generation.logprobs.masked_nll``; the prompt and passage carry no loss)
Optimiser: from the config (AdamW; bitsandbytes' PagedAdamW for the paper's GPU setting), linear schedule
with warm-up. Checkpoints hold the trainable parameters only (the adapters), and resume exactly.

Validation: the same loss on dev questions with each kind of context. Test: one table, rows ``base``
(adapters off) and ``trained`` x columns closed-book, top-1, low-rank, random, and each read with the NLI
filter (``generation.robust_table``), EM / F1, written to ``<log_dir>/retrobust_table.md``.
``export`` merges the adapters into a standalone Hugging Face model folder.
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from generation.logprobs import masked_nll
from generation.nli import make_judge
from generation.robust_table import KINDS, answer_columns, score_columns, table_markdown, table_means
from generation.settings import Generation, NLIFilter
from training.distributed import gather_objects
from training.lora import merged, merged_unquantised
from training.models import load_causal_lm
from training.records import merge_records
from training.rng_state import load_rng_state, save_rng_state
from training.schedule import warmup_then_decay
from training.settings import LM, as_settings, save_settings
from training.sharding import full_parameters, is_sharded, shard


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class RetRobust(L.LightningModule):
    """Args:
        lm: the LM (``smollm2-135m-instruct`` = the offline default) and how it trains: ``lm.lora`` (peft LoRA
            settings; None fine-tunes every weight, for the memory comparison, and has no ``base`` row),
            ``lm.load_in_4bit`` (QLoRA's NF4 base), ``lm.dtype``, ``lm.gradient_checkpointing``, ``lm.precision``
            (the compute precision of training, the judge and generation).
        optimizer: optimizer factory for the trainable parameters.
        warmup: linear warm-up over this share of the optimizer steps (rounded up; >= 1: a number of steps),
            then linear decay to 0.
        micro_batch_size: rows per forward pass inside a batch (gradients accumulate over the batch).
        evaluate_base: test also with the adapters off (the ``base`` row).
        nli: the NLI filter's judge (``lm``: the base LM, prompted; else an NLI classifier's folder, e.g.
            bart-large-mnli, the paper's) and its entailment threshold.
        nli_kinds: the contexts read with the NLI filter as well (columns ``nli_<kind>``).
        generation: greedy answers in the test table (``max_new_tokens``, ``batch_size``).
    """

    def __init__(self, lm: LM = LM(), optimizer: OptimizerCallable = adamw, warmup: float = 0.03,
                 micro_batch_size: int = 8, evaluate_base: bool = True, nli: NLIFilter = NLIFilter(),
                 nli_kinds: tuple[str, ...] = KINDS, generation: Generation = Generation()):
        super().__init__()
        save_settings(self, ignore=["optimizer"])
        lm = as_settings(lm, LM)
        if evaluate_base and lm.lora is None:
            raise ValueError("RetRobust: evaluate_base needs lm.lora (the base row is the model with its adapters off)")
        unknown = [k for k in nli_kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"RetRobust.nli_kinds: unknown context kinds {unknown}; expected some of {KINDS}")
        if warmup < 0:
            raise ValueError(f"RetRobust.warmup must be >= 0 (a share of the steps, or a number of steps), got {warmup}")
        self.optimizer_factory = optimizer
        # the groups as given (under LightningCLI, hparams hold their config dicts instead)
        self.lm_settings, self.nli, self.generation = as_settings(lm, LM), as_settings(nli, NLIFilter), \
            as_settings(generation, Generation)
        self.lm = self.tokenizer = self.judge = None
        # Checkpoints hold only the trainable parameters; on_load_checkpoint checks they are all there.
        self.strict_loading = False
        self.scores: dict[str, dict[str, float]] = {}   # test: question id -> {"<row>/<column>/em": 0/1, ...}

    # -- model ----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Builds the LM once (Lightning may call this again, e.g. before a test after fit)."""
        if self.lm is not None:
            return
        lm = self.lm_settings
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        # A 4-bit base is placed by bitsandbytes at load time; a plain one is built on CPU and moved by Lightning.
        self.lm, self.tokenizer = load_causal_lm(lm.name_or_path, device=device if lm.load_in_4bit else "cpu",
                                                 **lm.load_kwargs())
        self.lm.config.use_cache = False
        if lm.gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lm.lora is not None:
                self.lm.enable_input_require_grads()
        # FSDP2 (ModelParallelStrategy): the LM block by block, the frozen base with its adapters (a 4-bit base
        # is refused: training.sharding.refuse_quantized); nothing on one process or DDP
        shard(self, self.lm)

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    # -- training -------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # from_pretrained returns the model in eval mode, and Lightning keeps submodules' modes: LoRA dropout
        # must be on in training.
        self.lm.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"]
        # 1. NLL of the answer tokens only, each answer token of the global batch (all ranks) weighing the same
        loss = masked_nll(self.lm, tokens, self.hparams.micro_batch_size, across_ranks=True)
        self.log_dict({"train/loss": loss.detach(), "train/answer_tokens": float(tokens.num_loss_tokens),
                       "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]},
                      prog_bar=False, batch_size=len(tokens))
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=len(tokens))
        return loss

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        return warmup_then_decay(self, self.optimizer_factory, self.hparams.warmup, params=trainable, round_up=True)

    # -- validation: the loss with each kind of context ------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = {k: masked_nll(self.lm, batch["tokens"][k], self.hparams.micro_batch_size) for k in KINDS}
        n = len(batch["questions"])
        self.log_dict({f"val/loss_{k}": v for k, v in losses.items()}, batch_size=n)
        self.log("val/loss", torch.stack(list(losses.values())).mean(), batch_size=n, prog_bar=True)

    # -- test: the RetRobust table ---------------------------------------------------------------------
    def rows(self) -> list[str]:
        return (["base"] if self.hparams.evaluate_base else []) + ["trained"]

    def adapters(self, row: str):
        return self.lm.disable_adapter() if row == "base" else nullcontext()

    def setup_judge(self) -> None:
        if self.judge is None and self.hparams.nli_kinds:
            self.judge = make_judge(self.nli, self.lm, self.tokenizer, batch_size=self.generation.batch_size,
                                    device=str(self.device), adapters_off=self.lm_settings.lora is not None)

    def answer_table(self, questions: list[str], contexts: dict[str, list[str]], prompt_format) -> dict[str, list[str]]:
        """Answers of the current model (adapters as set by the caller) in every column."""
        return answer_columns(self.lm, self.tokenizer, questions, contexts, prompt_format=prompt_format, judge=self.judge,
                              nli_kinds=self.hparams.nli_kinds, max_new_tokens=self.generation.max_new_tokens,
                              batch_size=self.generation.batch_size)

    def on_test_epoch_start(self) -> None:
        self.setup_judge()
        self.scores = {}
        self.lm.eval()

    @torch.inference_mode()
    def test_step(self, batch: dict, batch_idx: int) -> None:
        questions, gold = batch["questions"], batch["answers"]
        fmt = self.trainer.datamodule.prompt_format
        for row in self.rows():
            # FSDP2: whole parameters for generation, so ranks need not generate in lockstep
            with self.adapters(row), full_parameters(self.lm):
                answers = self.answer_table(questions, batch["contexts"], fmt)
            scores = score_columns(row, answers, gold)                           # EM / F1 (SQuAD normalisation)
            for qid, score in zip(batch["ids"], scores):
                self.scores.setdefault(qid, {}).update(score)
            self.log_dict({f"test/{k}": sum(s[k] for s in scores) / len(scores) for k in scores[0]},
                          batch_size=len(questions))

    def on_test_epoch_end(self) -> None:
        # every rank's questions, each once (a distributed sampler repeats some to even out the shares)
        scores = merge_records([[{"id": qid, **row} for qid, row in part.items()]
                                for part in gather_objects(self.scores)])
        log_dir = Path(self.trainer.log_dir or ".")  # a broadcast: every rank must ask
        if not self.trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        means = table_means(scores)
        (log_dir / "retrobust_table.json").write_text(json.dumps(means, indent=1))
        (log_dir / "retrobust_table.md").write_text(table_markdown(means, self.rows())
                                                     + f"{len(scores)} test questions.\n")

    # -- checkpoints: adapters only ---------------------------------------------------------------------
    # One process or DDP: the adapters alone. FSDP2: whole, as each rank's shards (the frozen base once across the
    # ranks' files), because Lightning's sharded-checkpoint loader reads every key of the module's state dict.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not is_sharded(self.lm):
            keep = self.trainable_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # LoRA dropout draws from torch's RNG: a resumed run continues the same stream.
        save_rng_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # (no "state_dict" in a sharded checkpoint: the strategy has loaded the weights already)
        want, have = self.trainable_names(), set(checkpoint.get("state_dict", self.trainable_names()))
        if want != have:
            raise ValueError(f"RetRobust checkpoint: its parameters do not match the model's trainable ones (missing "
                             f"{sorted(want - have)[:3]}, unexpected {sorted(have - want)[:3]}); was it saved with "
                             "the same lora settings?")
        load_rng_state(checkpoint)

    # -- export -----------------------------------------------------------------------------------------
    def merged_model(self):
        """A plain Hugging Face model with the adapters merged into the weights. With a 4-bit base, the
        adapters are merged into a fresh unquantised copy of the base (``dtype``), not into the NF4 weights."""
        lm = self.lm_settings
        if lm.lora is None:
            return copy.deepcopy(self.lm).cpu()
        if not lm.load_in_4bit:
            return merged(self.lm).cpu()
        fresh, _ = load_causal_lm(lm.name_or_path, dtype=lm.dtype, lora=lm.lora, device="cpu")
        return merged_unquantised(self.lm, fresh)

    def export(self, target: str | Path) -> Path:
        """Write the merged model and the tokenizer to ``target`` (``AutoModelForCausalLM.from_pretrained``
        loads it) and the adapters alone to ``target/adapter``."""
        target = Path(target)
        model = self.merged_model()
        model.config.use_cache = True
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        if self.lm_settings.lora is not None:
            self.lm.save_pretrained(target / "adapter")
        return target

