"""RetRobust (Yoran et al., 2024): fine-tune a causal LM (QLoRA: 4-bit NF4 base + LoRA adapters, or plain
LoRA) to answer from a relevant retrieved passage and to ignore an irrelevant one.

One training step, on a batch of (prompt with one top-1 / low-rank / random passage, gold answer):
  1. loss:  L = -sum_t m_t log p(x_t | x_<t) / sum_t m_t, with m_t = 1 on the answer's tokens only
            (``generation.logprobs.masked_nll``; the prompt and passage carry no loss)
Optimiser: from the config (AdamW; bitsandbytes' PagedAdamW for the paper's GPU setting), linear schedule
with warm-up. Checkpoints hold the trainable parameters only (the adapters), and resume exactly.

Validation: the same loss on dev questions with each kind of context. Test: one table, rows ``base``
(adapters off) and ``trained`` x columns closed-book, top-1, low-rank, random, and each read with the NLI
filter (``generation.rag.read``, ``generation.nli``), EM / F1, written to ``<log_dir>/retrobust_table.md``.
``export`` merges the adapters into a standalone Hugging Face model folder.
"""

from __future__ import annotations

import copy
import json
import math
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from datamodules.retrobust import KINDS
from training.models import DEFAULT_GENERATOR, apply_lora, load_causal_lm
from generation.logprobs import masked_nll
from training.lora import merged
from generation.nli import LMJudge, NLIClassifier, nli_hypothesis, select_answers
from generation.qa_metrics import exact_match, f1_score
from generation.rag import read
from training.rng_state import load_rng_state, save_rng_state
from training.schedule import planned_steps
from lightning_modules.rag_eval import merge_records
from training.sharding import full_parameters, is_sharded, shard
from training.distributed import gather_objects

COLUMNS = ("closed_book", *KINDS, *(f"nli_{k}" for k in KINDS))


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class AdaptersOffJudge:
    """The judge of the NLI filter run on the base model (adapters disabled), whichever row is evaluated:
    the filter must not change between the base and trained rows, only the reader does."""

    def __init__(self, judge: LMJudge, model):
        self.judge, self.model = judge, model

    def entails(self, premises, hypotheses) -> list[bool]:
        with self.model.disable_adapter():
            return self.judge.entails(premises, hypotheses)


class RetRobust(L.LightningModule):
    """Args:
        model_name_or_path: the LM (``smollm2-135m-instruct`` = the offline default, or a folder / hub name).
        lora: peft LoRA settings ``{"r", "alpha", "dropout", "target_modules"}``; None fine-tunes every weight
            (full fine-tuning, for the memory comparison; no ``base`` row then).
        load_in_4bit: QLoRA: NF4 base through bitsandbytes (needs ``lora``).
        dtype: the weights' dtype (float32 on CPU; bfloat16 for a 13B model on a GPU).
        gradient_checkpointing: recompute activations in the backward pass (long prompts, big models).
        optimizer: optimizer factory for the trainable parameters.
        warmup_ratio: share of the optimizer steps with a linear warm-up; then linear decay to 0.
        micro_batch_size: rows per forward pass inside a batch (gradients accumulate over the batch).
        evaluate_base: test also with the adapters off (the ``base`` row).
        nli_model: ``"lm"``: the base LM as a prompted judge (``generation.nli.LMJudge``); else an NLI
            classifier's folder (e.g. bart-large-mnli, the paper's).
        nli_threshold: entailment probability needed (None: 0.5 for the LM judge, argmax for a classifier).
        nli_kinds: the contexts read with the NLI filter as well (columns ``nli_<kind>``).
        max_new_tokens / gen_batch_size: greedy generation in the test table.
        precision: the LM's compute precision for training, the judge and generation (``auto``, ``fp32``,
            ``bf16``; None: ``$RAGKIT_PRECISION``): the encoders' rule, see training.precision.set_precision.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_GENERATOR, lora: dict | None = None,
                 load_in_4bit: bool = False, dtype: str = "float32", gradient_checkpointing: bool = False,
                 optimizer: OptimizerCallable = adamw, warmup_ratio: float = 0.03, micro_batch_size: int = 8,
                 evaluate_base: bool = True, nli_model: str = "lm", nli_threshold: float | None = None,
                 nli_kinds: tuple[str, ...] = KINDS, max_new_tokens: int = 24, gen_batch_size: int = 8,
                 precision: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if load_in_4bit and lora is None:
            raise ValueError("RetRobust: load_in_4bit needs lora (a 4-bit base is frozen; the adapters train)")
        if evaluate_base and lora is None:
            raise ValueError("RetRobust: evaluate_base needs lora (the base row is the model with its adapters off)")
        unknown = [k for k in nli_kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"RetRobust.nli_kinds: unknown context kinds {unknown}; expected some of {KINDS}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"RetRobust.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.optimizer_factory = optimizer
        self.lm = self.tokenizer = self.judge = None
        # Checkpoints hold only the trainable parameters; on_load_checkpoint checks they are all there.
        self.strict_loading = False
        self.scores: dict[str, dict[str, float]] = {}   # test: question id -> {"<row>/<column>/em": 0/1, ...}

    # -- model ----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Builds the LM once (Lightning may call this again, e.g. before a test after fit)."""
        if self.lm is not None:
            return
        hp = self.hparams
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        # A 4-bit base is placed by bitsandbytes at load time; a plain one is built on CPU and moved by Lightning.
        self.lm, self.tokenizer = load_causal_lm(hp.model_name_or_path, dtype=hp.dtype, load_in_4bit=hp.load_in_4bit,
                                                 lora=hp.lora, device=device if hp.load_in_4bit else "cpu",
                                                 precision=hp.get("precision"))
        self.lm.config.use_cache = False
        if hp.gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hp.lora is not None:
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
        from transformers import get_linear_schedule_with_warmup

        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        total = int(planned_steps(self.trainer))
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        hp = self.hparams
        if self.judge is not None or not hp.nli_kinds:
            return
        if hp.nli_model == "lm":
            judge = LMJudge(self.lm, self.tokenizer, threshold=0.5 if hp.nli_threshold is None else hp.nli_threshold,
                            batch_size=hp.gen_batch_size)
            self.judge = AdaptersOffJudge(judge, self.lm) if hp.lora is not None else judge
        else:
            self.judge = NLIClassifier(hp.nli_model, threshold=hp.nli_threshold, device=str(self.device))

    def answer_table(self, questions: list[str], contexts: dict[str, list[str]], prompt_format) -> dict[str, list[str]]:
        """Answers of the current model (adapters as set by the caller) in every column."""
        hp = self.hparams
        kw = dict(prompt_format=prompt_format, max_new_tokens=hp.max_new_tokens, batch_size=hp.gen_batch_size)
        out = {"closed_book": read(self.lm, self.tokenizer, questions, None, **kw).answers}   # 1. no retrieval
        for kind in KINDS:                                                                     # 2. one passage each
            out[kind] = read(self.lm, self.tokenizer, questions, [[p] for p in contexts[kind]], **kw).answers
        for kind in hp.nli_kinds:                                   # 3. NLI filter: keep the read answer if entailed
            entailed = self.judge.entails(contexts[kind], [nli_hypothesis(q, a) for q, a in zip(questions, out[kind])])
            out[f"nli_{kind}"] = select_answers(entailed, out[kind], out["closed_book"])
        return out

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
            for column, preds in answers.items():                 # 4. EM / F1 (SQuAD normalisation)
                em = [exact_match(p, g) for p, g in zip(preds, gold)]
                f1 = [f1_score(p, g) for p, g in zip(preds, gold)]
                for qid, e, f in zip(batch["ids"], em, f1):
                    self.scores.setdefault(qid, {}).update({f"{row}/{column}/em": e, f"{row}/{column}/f1": f})
                self.log_dict({f"test/{row}/{column}/em": sum(em) / len(em), f"test/{row}/{column}/f1": sum(f1) / len(f1)},
                              batch_size=len(questions))

    def on_test_epoch_end(self) -> None:
        # every rank's questions, each once (a distributed sampler repeats some to even out the shares)
        scores = merge_records([[{"id": qid, **row} for qid, row in part.items()]
                                for part in gather_objects(self.scores)])
        log_dir = Path(self.trainer.log_dir or ".")  # a broadcast: every rank must ask
        if not self.trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        keys = [k for k in (scores[0] if scores else {}) if k != "id"]
        means = {k: sum(row[k] for row in scores) / len(scores) for k in keys}
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
        hp = self.hparams
        if hp.lora is None:
            return copy.deepcopy(self.lm).cpu()
        if not hp.load_in_4bit:
            return merged(self.lm).cpu()
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        base, _ = load_causal_lm(hp.model_name_or_path, dtype=hp.dtype, device="cpu")
        model = apply_lora(base, **hp.lora)
        set_peft_model_state_dict(model, {k: v.cpu() for k, v in get_peft_model_state_dict(self.lm).items()})
        return model.merge_and_unload()  # a fresh copy: merging in place is fine

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
        if self.hparams.lora is not None:
            self.lm.save_pretrained(target / "adapter")
        return target


def table_markdown(means: dict[str, float], rows: list[str]) -> str:
    """The RetRobust table: one line per row, EM (F1) per column."""
    columns = [c for c in COLUMNS if any(f"{r}/{c}/em" in means for r in rows)]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        cells = [f"{means[f'{r}/{c}/em']:.3f} ({means[f'{r}/{c}/f1']:.3f})" if f"{r}/{c}/em" in means else "-"
                 for c in columns]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nEM (F1); closed_book = no retrieval; nli_<kind>: that read with the NLI filter.\n"
