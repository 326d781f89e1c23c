"""LoRA retrievers: only adapter weights train, and the export holds merged weights that transformers and
sentence-transformers load as a plain model and that encode exactly like the trained module."""

from pathlib import Path

import torch

from train import cli_main


def test_lora_fit_and_merged_export(tiny_bert_dir, tiny_beir_dir, tmp_path):
    cli = cli_main(["--config", "configs/dpr_lora_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
                    "--model.init_args.encoder.passage_max_length", "24", "--model.init_args.encoder.eval_passage_max_length", "24",
                    "--model.init_args.lora.r", "4", "--model.init_args.lora.dropout", "0.0",
                    # fp32 on every CPU: the export is compared with sentence-transformers' fp32 encoding to 1e-5
                    "--model.init_args.encoder.precision", "fp32",
                    "--model.init_args.optimizer.init_args.lr", "0.05", "--model.init_args.warmup", "0",
                    "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "3",
                    "--data.init_args.eval_batch_size", "6", "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                    "--trainer.enable_progress_bar", "false"])
    model = cli.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # query, key, value in 2 layers, A and B each
    assert len(trainable) == 2 * 3 * 2
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)   # B starts at 0: it moved

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    export = Path(cli.trainer.log_dir) / "export"
    hf = AutoModel.from_pretrained(export)
    assert not any("lora" in k for k in hf.state_dict())
    base = AutoModel.from_pretrained(tiny_bert_dir).state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(hf.state_dict()[key], base[key])          # the update was merged in
    assert torch.equal(hf.state_dict()["encoder.layer.0.output.dense.weight"], base["encoder.layer.0.output.dense.weight"])
    texts = ["a query about topic 1", "document 3 about topic 3 and word3"]
    ours = model.passage_encoder.encode(texts, show_progress=False)
    st = torch.tensor(SentenceTransformer(str(export), device="cpu").encode(texts))
    assert torch.allclose(ours, st, atol=1e-5)
    assert hasattr(model.passage_encoder.model, "peft_config")          # the module keeps its adapters
