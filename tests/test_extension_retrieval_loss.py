"""The retrieval-loss extension point (docs/extending.md): a loss in one new file
(tests/extension_examples/toy_retrieval_loss.py) chosen by a config with ``class_path``, no edit to existing
modules. The parser builds it, and the module's training step optimises it: the logged loss is the margin
formula computed by hand on the step's scores, and the weights after one SGD step are those its gradient gives."""

import copy

import lightning as L
import pytest
import torch

from train import cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = """
model:
  init_args:
    loss:
      class_path: extension_examples.toy_retrieval_loss.MarginLoss
      init_args: {margin: 0.3}
    warmup: 0
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.5, weight_decay: 0.0}
trainer:
  gradient_clip_val: null
  max_steps: 1
"""


def _hinge_by_hand(scores: torch.Tensor, exclude: torch.Tensor | None, margin: float) -> torch.Tensor:
    """1/B sum_i 1/|N_i| sum_{j in N_i} max(0, m - s_ii + s_ij), N_i: j != i and not excluded."""
    per_query = []
    for i in range(scores.shape[0]):
        terms = [torch.clamp(margin - scores[i, i] + scores[i, j], min=0) for j in range(scores.shape[1])
                 if j != i and not (exclude is not None and exclude[i, j])]
        per_query.append(sum(terms) / len(terms))
    return sum(per_query) / len(per_query)


@pytest.mark.parametrize("gradcache", [None, "2"])
def test_toy_loss_from_a_config_is_what_the_step_optimises(tiny_bert_dir, tiny_beir_dir, tmp_path, gradcache):
    """The plain step and the GradCache step (chunks of 2) alike."""
    from extension_examples.toy_retrieval_loss import MarginLoss

    toy = tmp_path / "toy_loss.yaml"
    toy.write_text(TOY)
    cli = cli_main(["--config", "configs/dpr_scifact.yaml", "--config", str(toy),
                    "--model.init_args.encoder.name_or_path", tiny_bert_dir,
                    "--model.init_args.encoder.passage_max_length", "32", "--model.init_args.encoder.precision", "fp32",
                    "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
                    "--data.init_args.num_negatives", "1", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                    "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false",
                    *(["--model.init_args.gradcache.chunk_size", gradcache] if gradcache else [])], run=False)
    model = cli.model
    assert isinstance(model.loss, MarginLoss) and model.loss.margin == 0.3
    assert model.automatic_optimization == (gradcache is None)

    seen = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["batch"], seen["encoder"] = batch, copy.deepcopy(pl_module.passage_encoder)   # shared by queries

    cli.trainer.callbacks.append(Snapshot())
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1

    # the hand formula on the step's scores (cosine: the embeddings are L2-normalised), with the batch's mask
    encoder, batch = seen["encoder"], seen["batch"]
    q = encoder(**encoder.tokenize(batch["queries"], 64))
    p = encoder(**encoder.tokenize(batch["passages"], 32))
    scores = q @ p.T
    assert scores.shape == (3, 6)
    expected = _hinge_by_hand(scores, batch.get("exclude"), 0.3)
    logged = cli.trainer.callback_metrics["train/loss"]
    torch.testing.assert_close(logged, expected.detach(), atol=1e-6, rtol=1e-5)
    infonce = torch.nn.functional.cross_entropy(scores / 0.05, torch.arange(3))
    assert abs(infonce.item() - logged.item()) > 1e-2       # not the default loss

    # one SGD step (lr 0.5, no warm-up, no clipping) on the hand loss lands on the trained weights
    expected.backward()
    trained = dict(model.passage_encoder.model.named_parameters())
    moved = 0
    for name, w in encoder.model.named_parameters():
        if w.grad is None:
            continue
        torch.testing.assert_close(trained[name].detach(), w.detach() - 0.5 * w.grad, atol=1e-6, rtol=1e-5)
        moved += bool(w.grad.abs().sum() > 0)
    assert moved > 10
