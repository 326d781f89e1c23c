"""ContrastiveRetriever's Contriever/MoCo mode: the MoCo loss, EMA update and queue by hand, the queue in
checkpoints and on resume, a Contriever fit through the CLI, and GradCache inside the module."""

import math
from pathlib import Path

import pytest
import torch

from lightning_modules import ContrastiveRetriever
from retrieval.losses import InfoNCE
from retrieval.settings import EncoderSettings, GradCacheSettings, Negatives
from train import cli_main


def _module(tiny_bert_dir, **kw):
    module = ContrastiveRetriever(EncoderSettings(tiny_bert_dir, passage_max_length=32), **kw)
    module.configure_model()
    return module


def test_moco_loss_by_hand(tiny_bert_dir):
    m = _module(tiny_bert_dir, negatives=Negatives(queue_size=4), loss=InfoNCE(temperature=0.5))
    m._enqueue(torch.tensor([[0.0, 1.0] + [0.0] * 30]))          # one key in the queue: u = e_2
    q = torch.zeros(2, 32)
    q[0, 0] = q[1, 1] = 1.0                                      # q0 = e_1, q1 = e_2
    k = q.clone()                                                # k0+ = e_1, k1+ = e_2
    loss, acc = m._loss(q, k, {})
    # MoCo: l_pos = q.k+ / tau, l_neg = q.queue / tau; the batch's other key is not a negative.
    # q0: pos 1/0.5 = 2, queue 0 -> -log(e^2 / (e^2 + e^0)) = log(1 + e^-2)
    # q1: pos 2, queue q1.u = 1 -> 2 -> log 2
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2, rel=1e-6)
    m.negatives.queue_in_batch = True
    # now q0 also sees k1 (score 0): log(1 + 2 e^-2); q1 also sees k0 (score 0): log(2 + e^-2)
    loss, _ = m._loss(q, k, {})
    assert loss.item() == pytest.approx((math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.exp(-2))) / 2, rel=1e-6)


def test_moco_training_step_scores_against_the_queue_before_this_batch_joins_it(tiny_bert_dir):
    """The module's own training step: the loss sees the queue as it was before the step (the batch's keys
    are enqueued after the loss, as in MoCo), then the keys join the queue."""
    import copy

    torch.manual_seed(0)
    m = _module(tiny_bert_dir, negatives=Negatives(queue_size=8, momentum=0.5), loss=InfoNCE(temperature=0.5))
    m._enqueue(torch.nn.functional.normalize(torch.randn(3, m.passage_encoder.dim), dim=-1))
    batch = {"queries": ["topic one question", "topic two question"],
             "passages": ["document about topic one", "document about topic two"]}
    ref = copy.deepcopy(m)
    q = ref.embed(batch["queries"], True, ref.settings.query_max_length)
    keys = ref._momentum_keys(batch["passages"])
    expected, _ = ref._loss(q, keys, batch)                           # queue: the 3 old keys only
    queue_before = m.moco_queue[:3].clone()
    loss = m.training_step(batch, 0)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert m.moco_queue_len.item() == 5 and torch.equal(m.moco_queue[:3], queue_before)
    torch.testing.assert_close(m.moco_queue[3:5], keys, atol=1e-6, rtol=1e-6)
    # with this batch's keys already in the queue the loss would differ (each positive also a negative)
    ref._enqueue(keys)
    assert abs(ref._loss(q, keys, batch)[0].item() - expected.item()) > 1e-3


def test_configure_model_is_idempotent_and_builds_the_dtype_asked(tiny_bert_dir):
    m = ContrastiveRetriever(EncoderSettings(tiny_bert_dir, dtype="bfloat16"), shared_encoder=False, lora={"r": 2})
    assert m.passage_encoder is None and not list(m.parameters())          # nothing built in __init__
    m.configure_model()
    encoders = (m.passage_encoder, m.query_encoder)
    m.configure_model()
    assert (m.passage_encoder, m.query_encoder) == encoders and m.query_encoder is not m.passage_encoder
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.query_encoder.max_length == m.settings.query_max_length
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="dtype 'float31'"):
        EncoderSettings(tiny_bert_dir, dtype="float31")


def test_ema_update_and_ring_buffer_by_hand(tiny_bert_dir):
    m = _module(tiny_bert_dir, negatives=Negatives(queue_size=3, momentum=0.9))
    key_w = m.key_encoder.model.embeddings.word_embeddings.weight
    q_w = m.passage_encoder.model.embeddings.word_embeddings.weight
    with torch.no_grad():
        key_w.zero_()
        q_w.fill_(1.0)
    m._momentum_keys(["a b"])
    assert torch.allclose(key_w, torch.full_like(key_w, 0.1))    # 0.9 * 0 + 0.1 * 1
    m._momentum_keys(["a b"])
    assert torch.allclose(key_w, torch.full_like(key_w, 0.19))   # 0.9 * 0.1 + 0.1 * 1
    assert not key_w.requires_grad
    a, b, c, d = (torch.full((1, 32), float(i)) for i in range(1, 5))
    m._enqueue(torch.cat([a, b]))
    assert m.moco_queue_ptr.item() == 2 and m.moco_queue_len.item() == 2
    m._enqueue(torch.cat([c, d]))                                # c -> slot 2, d -> slot 0 (oldest overwritten)
    assert m.moco_queue[:, 0].tolist() == [4.0, 2.0, 3.0]
    assert m.moco_queue_ptr.item() == 1 and m.moco_queue_len.item() == 3
    with pytest.raises(ValueError, match="needs shared_encoder=True"):
        _module(tiny_bert_dir, negatives=Negatives(queue_size=3), shared_encoder=False)


def _contriever_args(tiny_bert_dir, tiny_beir_dir, tmp_path, *extra):
    return ["--config", "configs/contriever_scifact.yaml",
            "--model.init_args.encoder.name_or_path", tiny_bert_dir, "--model.init_args.encoder.passage_max_length", "16",
            "--model.init_args.encoder.query_max_length", "16", "--model.init_args.encoder.eval_passage_max_length", "16",
            "--model.init_args.negatives.queue_size", "8",
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "4",
            "--data.init_args.eval_batch_size", "6", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "5", *extra]


def test_contriever_fit_test_export_queue_in_checkpoint_and_resume(tiny_bert_dir, tiny_beir_dir, tmp_path):
    # the default run: fit (2 steps), test with the checkpoint, export
    cli = cli_main(_contriever_args(tiny_bert_dir, tiny_beir_dir, tmp_path, "--trainer.max_steps", "2"))
    module = cli.model
    assert cli.trainer.global_step == 2 and module.moco_queue_len.item() == 8 and module.moco_queue_ptr.item() == 0
    assert 0 <= cli.trainer.callback_metrics["test/ndcg@10"].item() <= 1
    assert (Path(cli.trainer.log_dir) / "export" / "modules.json").exists()
    assert not any("key_encoder" in p.name for p in (Path(cli.trainer.log_dir) / "export").iterdir())
    ckpt_path = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    state = torch.load(ckpt_path, weights_only=False)["state_dict"]
    assert torch.equal(state["moco_queue"], module.moco_queue) and state["moco_queue_len"].item() == 8
    assert any(k.startswith("key_encoder.") for k in state)
    # resume: the queue comes back from the checkpoint and the third step writes slots 0-3
    resumed = cli_main(["fit", *_contriever_args(tiny_bert_dir, tiny_beir_dir, tmp_path, "--trainer.max_steps", "3"),
                        "--ckpt_path", str(ckpt_path)])
    assert resumed.trainer.global_step == 3
    assert torch.isfinite(resumed.trainer.callback_metrics["train/loss"])
    assert torch.equal(resumed.model.moco_queue[4:], state["moco_queue"][4:])
    assert not torch.equal(resumed.model.moco_queue[:4], state["moco_queue"][:4])
    assert resumed.model.moco_queue_ptr.item() == 4


def _no_dropout_bert(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.models import resolve_model_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def test_gradcache_step_equals_plain_step(tiny_beir_dir, tmp_path):
    """One SGD step with GradCache (chunks of 2) lands on the same weights as one plain step, with BM25
    hard negatives and the false-negative mask."""
    import lightning as L

    from datamodules import BEIRDataModule

    path = _no_dropout_bert(tmp_path)
    weights = []
    for chunk in (None, 2):
        L.seed_everything(0)
        # fp32 on every CPU: GradCache equals the plain step to 1e-6 only without bf16 rounding
        model = ContrastiveRetriever(EncoderSettings(path, passage_max_length=24, precision="fp32"), warmup=0,
                                     gradcache=GradCacheSettings(chunk_size=chunk),
                                     optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
        dm = BEIRDataModule(str(tiny_beir_dir), num_negatives=1, batch_size=5, seed=0)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(model, dm)
        weights.append({k: v.clone() for k, v in model.passage_encoder.model.state_dict().items()})
    start = _module(path).passage_encoder.model.state_dict()
    changed = [k for k in start if not torch.equal(start[k], weights[0][k])]
    assert len(changed) > 10
    for k in weights[0]:
        # chunked backward sums in another order: float error up to ~1e-6 after the lr=0.5 step
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-5), k
