"""Retrieval evaluation as a callback: collects what the module's validation/test steps return for the
corpus (dataloader 0) and the queries (dataloader 1), gathers it from all ranks, asks the module to
``rank`` it, scores the run against the datamodule's qrels, logs the metrics (TensorBoard) and, when
testing, writes a TREC run file and a JSON of the metrics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from retrieval.metrics import evaluate, write_metrics, write_trec_run
from training.records import first_of_each_id


def _merge(parts: list[dict]) -> dict:
    """Concatenate step outputs ``{"ids": list, <field>: tensor | list}`` into one dict."""
    out = {"ids": [i for p in parts for i in p["ids"]]}
    for key in parts[0]:
        if key != "ids":
            vals = [p[key] for p in parts]
            out[key] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [v for vs in vals for v in vs]
    return out


def _dedupe(merged: dict) -> dict:
    """Drop repeated ids (a distributed sampler pads the last batch with copies)."""
    keep = first_of_each_id(merged["ids"])
    out = {"ids": [merged["ids"][i] for i in keep]}
    for key, val in merged.items():
        if key != "ids":
            out[key] = val[keep] if isinstance(val, torch.Tensor) else [val[i] for i in keep]
    return out


class RetrievalEvaluator(L.Callback):
    """Args:
        k: depth of the ranking kept per query (Recall@k needs k at least as large).
        output_dir: where ``<stage>_run.trec`` and ``<stage>_metrics.json`` go (default: the logger's dir).
    """

    def __init__(self, k: int = 100, output_dir: str | None = None):
        self.k, self.output_dir = k, output_dir
        self._outputs: dict[int, list[dict]] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}

    def _collect(self, outputs, dataloader_idx: int) -> None:
        self._outputs.setdefault(dataloader_idx, []).append(outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._collect(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "test")

    def _finish(self, trainer, pl_module, stage: str) -> None:
        if not self._outputs:
            return
        if sorted(self._outputs) != [0, 1]:
            raise RuntimeError(f"RetrievalEvaluator expects two {stage} dataloaders (0: corpus, 1: queries), "
                               f"got outputs for {sorted(self._outputs)}")
        corpus, queries = (_merge(self._outputs[i]) for i in (0, 1))
        self._outputs = {}
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (corpus, queries))
            corpus = _dedupe(_merge([c for c, _ in gathered]))
            queries = _dedupe(_merge([q for _, q in gathered]))
        metrics = None
        # trainer.log_dir is a broadcast: every rank asks (asked on rank 0 alone, it would pair with the metrics
        # broadcast below and hand the other ranks a path as metrics)
        out = Path(self.output_dir or trainer.log_dir or ".") if stage == "test" else None
        if trainer.is_global_zero:
            qrels = trainer.datamodule.eval_qrels(stage)
            run = pl_module.rank(corpus, queries, self.k)
            metrics = evaluate(run, qrels, ndcg_at=(10,), recall_at=(100,), mrr_at=(10,))
            if out is not None:
                write_trec_run(run, out / f"{stage}_run.trec", tag=type(pl_module).__name__)
                write_metrics(metrics, out / f"{stage}_metrics.json", num_queries=len(qrels))
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self.last_metrics[stage] = metrics
        pl_module.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=False)
