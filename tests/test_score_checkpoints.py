"""SCoRe Stage II from Stage I's checkpoint: the folder an FSDP2 run saves (2 gloo processes, the CPU FSDP2 preset's
strategy), a plain .ckpt file, and a Stage II run resuming from its own checkpoint after Stage I's is gone."""

import os

import pytest
import torch
from torch.utils.data import DataLoader

from training.settings import LM
from test_fsdp2 import SCORE_PROBLEMS, _full_weights, _spawn, _trainer, sgd

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def zero_lr(params):
    return torch.optim.SGD(params, lr=0.0)  # a Stage II step that keeps the weights it started from


def _score(model_dir, stage, init_from, optimizer):
    from lightning_modules.score import SCoRe
    from rl.self_correction import ProblemFormat
    from rl.settings import SampleLog, Sampling, Updates
    from test_score import parity_reward

    model = SCoRe(LM(model_dir, lora=LORA), stage=stage, init_from=init_from, task="gsm8k", reward=parity_reward,
                  instruction="Check it.", sampling=Sampling(group_size=2, max_turn_tokens=3, max_response_tokens=40),
                  updates=Updates(micro_batch_size=8), log_samples=SampleLog(count=0), optimizer=optimizer)
    model.format = ProblemFormat(prompt="{problem}", chat=False)
    return model


def _loader(batch_size=2):
    return DataLoader(SCORE_PROBLEMS, batch_size=batch_size, collate_fn=lambda rows: rows)


def _policy_weights(model):
    return {n: w for n, w in _full_weights(model.policy).items()}


def _stages_worker(rank, world, port, model_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import ModelCheckpoint

    from training.sharding import FSDP2Strategy

    torch.manual_seed(0)
    stage1 = _score(model_dir, "I", None, sgd)
    checkpoint = ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpt"), every_n_train_steps=1, save_top_k=-1)
    _trainer(2, FSDP2Strategy(), os.path.join(out_dir, "s1"), max_steps=1, callbacks=[checkpoint]).fit(stage1, _loader())
    folder = checkpoint.best_model_path or checkpoint.last_model_path
    weights1 = _policy_weights(stage1)
    # Stage II under FSDP2 from the folder, one step at lr 0: its sharded policy holds Stage I's weights
    stage2 = _score(model_dir, "II", folder, zero_lr)
    _trainer(2, FSDP2Strategy(), os.path.join(out_dir, "s2"), max_steps=1, enable_checkpointing=False).fit(
        stage2, _loader())
    weights2 = _policy_weights(stage2)
    if rank == 0:
        torch.save({"stage1": weights1, "stage2": weights2, "folder": folder}, os.path.join(out_dir, "result.pt"))


@pytest.mark.distributed
def test_stage_two_starts_from_a_sharded_fsdp2_stage_one_checkpoint(tiny_llama_dir, tmp_path):
    """Before: load_policy_weights called torch.load on the folder and stopped with IsADirectoryError."""
    from lightning_modules.score import SCoRe

    _spawn(_stages_worker, tiny_llama_dir, str(tmp_path))
    result = torch.load(tmp_path / "result.pt")
    folder = result["folder"]
    assert os.path.isdir(folder) and len([f for f in os.listdir(folder) if f.endswith(".distcp")]) == 2
    stage1, stage2 = result["stage1"], result["stage2"]
    base = SCoRe(LM(tiny_llama_dir, lora=LORA), stage="II", task="gsm8k")
    base.configure_model()
    initial = _policy_weights(base)
    moved = [n for n in stage1 if "lora_B" in n and not torch.equal(stage1[n], initial[n])]
    assert moved, "Stage I did not move the adapters: the test would not tell the checkpoints apart"
    for n, w in stage1.items():
        torch.testing.assert_close(stage2[n], w, atol=0, rtol=0, msg=n)
    # the same folder read by one process without a process group (e.g. to evaluate Stage I)
    alone = SCoRe(LM(tiny_llama_dir, lora=LORA), stage="II", task="gsm8k", init_from=folder)
    alone.configure_model()
    for n, w in _policy_weights(alone).items():
        torch.testing.assert_close(w, stage1[n], atol=0, rtol=0, msg=n)


def test_init_from_is_applied_by_fit_and_not_needed_to_resume(tiny_llama_dir, tmp_path):
    """A Stage I checkpoint (a .ckpt with policy.* weights). Fit at lr 0 starts from it; a Stage II run checkpointed
    after step 1 resumes step 2 from its own checkpoint after Stage I's file is deleted (before: configure_model read
    init_from again and stopped with FileNotFoundError), and ends where the uninterrupted run ends."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_modules.score import SCoRe

    stage1 = SCoRe(LM(tiny_llama_dir, lora=LORA), stage="I", task="gsm8k")
    stage1.configure_model()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in stage1.policy.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    init = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in stage1.policy.state_dict().items()}}, init)
    expected = _policy_weights(stage1)

    def fit(name, optimizer, steps, ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        model = _score(tiny_llama_dir, "II", str(init), optimizer)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
                            enable_checkpointing=bool(callbacks), default_root_dir=tmp_path / name)
        trainer.fit(model, _loader(4), ckpt_path=ckpt_path)  # one step per epoch: the checkpoint at an epoch's end
        return _policy_weights(model)

    for n, w in fit("lr0", zero_lr, 1).items():          # fit starts from Stage I's weights
        torch.testing.assert_close(w, expected[n], atol=0, rtol=0, msg=n)
    full = fit("full", sgd, 2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    fit("half", sgd, 1, callbacks=[checkpoint])
    os.remove(init)                                       # Stage I's checkpoint is gone
    resumed = fit("resumed", sgd, 2, ckpt_path=checkpoint.last_model_path or checkpoint.best_model_path)
    assert any(not torch.equal(full[n], expected[n]) for n in full)
    for n, w in full.items():
        torch.testing.assert_close(resumed[n], w, atol=1e-6, rtol=1e-5, msg=n)
