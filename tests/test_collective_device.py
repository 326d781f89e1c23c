"""Collectives on the device the process group serves (training.distributed), checked without a GPU, 2 CPU
processes each.

NCCL serves CUDA tensors only; the RL update's counts (rl.update), SCoRe's selection reward and the gathers of
embeddings are built on whatever device their inputs live on, often the CPU. A process group whose only backend
serves CUDA (``cuda:gloo``) reproduces NCCL's refusal on a CPU machine: a raw ``dist.all_reduce`` of a CPU tensor
stops with "No backend type associated with device type cpu".

What these tests prove, and what they do not:
- under the CUDA-only group, every collective of the RL path (rl.update's token and sequence counts, mean_over_ranks,
  SCoRe's selection reward, the gathers) asks the group for its device and tries to move there: the error is the
  helper's own ("runs collectives on cuda tensors only, and this process has no cuda device"), raised before the
  collective, not NCCL's (gloo's) refusal of a CPU tensor. With a GPU the same call moves the tensor to
  ``cuda:<current device>``; that the move and the NCCL call then succeed needs a GPU and is not tested here;
- under a CPU group the helpers give the right values on the caller's device (and leave their input alone);
- no module of the project calls a raw tensor collective outside training/distributed.py (a source scan), so the
  device choice cannot be bypassed;
- rank-global quantities: the sequence count of a seq-mean loss (unequal rows per rank: the averaged gradient is
  one process's), and SCoRe's selection reward (ranks with training accuracy 1 and 0 both record 0.5)."""

import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent
CUDA_ONLY = "runs collectives on cuda tensors only"
ROWS = {0: [0], 1: [1, 2, 3]}
ADV = torch.tensor([1.5, -0.5, 0.25, -1.0])


def _raises(fn) -> str:
    try:
        fn()
    except Exception as err:  # noqa: BLE001  (the message is the result)
        return f"{type(err).__name__}: {err}"
    return "no error"


def _cuda_only_checks(rank: int) -> dict:
    """Under the ``cuda:gloo`` group: which error each collective path raises on a CPU tensor."""
    from lightning_modules.score import SCoRe
    from training.distributed import gather_no_grad, gather_with_grad, mean_over_ranks, sum_over_ranks
    from rl.settings import PolicyLoss, Updates
    from rl.update import update
    from generation.tokens import TokenBatch
    from rl.rollout import Rollouts

    tokens = TokenBatch.from_segments([[([5, 6], 0), ([7, 8], 1)], [([5], 0), ([9], 1)]], pad_id=0)
    r = Rollouts(tokens, torch.zeros(tokens.input_ids.shape), [2, 1], ["", ""], [[""], [""]])
    policy = torch.nn.Linear(2, 2)  # the update stops at its first count, before any forward pass
    recorder = SCoRe.__new__(SCoRe)
    torch.nn.Module.__init__(recorder)
    recorder.register_buffer("recent_rewards", torch.full((2,), float("nan")))
    return {
        "mean_over_ranks": _raises(lambda: mean_over_ranks(torch.tensor(3.0))),
        "sum_over_ranks": _raises(lambda: sum_over_ranks(torch.tensor([1.0, 2.0]))),
        "gather_with_grad": _raises(lambda: gather_with_grad(torch.ones(2, 3, requires_grad=True))),
        "gather_no_grad": _raises(lambda: gather_no_grad(torch.ones(2, 3))),
        "rl_update": _raises(lambda: update(policy, r, torch.zeros(len(r)), PolicyLoss(), Updates(),
                                            lambda loss: None, lambda: None)),
        "selection_reward": _raises(lambda: SCoRe.record_final_accuracy(recorder, torch.tensor([1.0, 0.0]))),
        "raw": _raises(lambda: dist.all_reduce(torch.ones(1))),
    }


def _cpu_checks(rank: int, model_dir: str) -> dict:
    from lightning_modules.score import SCoRe
    from training.settings import LM
    from training.distributed import all_gather, all_reduce, group_device, mean_over_ranks, sum_over_ranks

    x = torch.tensor([1.0, 2.0]) * (rank + 1)
    out = {"device": str(group_device()), "all_reduce": all_reduce(x), "x_after": x.clone(),
           "all_gather": torch.stack(all_gather(x)), "mean": mean_over_ranks(torch.tensor(float(rank + 1))),
           "sum": sum_over_ranks(torch.tensor(float(rank + 1)))}
    # SCoRe's selection: rank 0's samples all right, rank 1's all wrong -> 0.5 on both, in a window of 1
    score = SCoRe(LM(model_dir), stage="I", task="gsm8k", selection_window=1)
    out["selection"] = score.record_final_accuracy(torch.ones(4) if rank == 0 else torch.zeros(4))
    # the sequence count of a seq-mean loss over ranks: rank 0 one row, rank 1 three
    out["seq_mean_grads"] = _seq_mean_grads(model_dir, ROWS[rank])
    for g in out["seq_mean_grads"]:  # what DDP does: average over ranks
        dist.all_reduce(g)
        g /= dist.get_world_size()
    return out


def _seq_mean_grads(model_dir: str, rows: list[int]) -> list[torch.Tensor]:
    from test_data_parallel_normaliser import _grads, _rollouts

    from rl.settings import PolicyLoss, Updates
    from rl.update import update

    model, r = _rollouts(model_dir)
    model.zero_grad()
    idx = torch.tensor(rows)
    cfg = PolicyLoss(aggregation="seq-mean-token-mean")
    update(model, r.select(idx), ADV[idx], cfg, Updates(1, None, 2), lambda loss: loss.backward(), lambda: None,
           temperature=0.7)
    return _grads(model)


def _worker(rank, world, init_dir, model_dir, out_dir):
    torch.set_num_threads(1)
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    result = {}
    dist.init_process_group("cuda:gloo", init_method=f"file://{init_dir}/a", rank=rank, world_size=world)
    try:
        result["cuda_only"] = _cuda_only_checks(rank)
    finally:
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{init_dir}/b", rank=rank, world_size=world)
    try:
        result["cpu"] = _cpu_checks(rank, model_dir)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def results(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    mp.spawn(_worker, args=(2, str(out), tiny_llama_dir, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{k}.pt") for k in (0, 1)]


def test_cuda_only_group_reproduces_the_nccl_failure_of_a_raw_collective(results):
    for res in results:
        assert "No backend type associated with device type cpu" in res["cuda_only"]["raw"]


@pytest.mark.parametrize("path", ["mean_over_ranks", "sum_over_ranks", "gather_with_grad", "gather_no_grad",
                                  "rl_update", "selection_reward"])
def test_every_rl_collective_asks_the_group_for_its_device(results, path):
    """On the old code these raised "No backend type associated with device type cpu" (the raw collective on the
    CPU tensor); now the helper chooses CUDA, the group's device, and says that this process has none."""
    for res in results:
        message = res["cuda_only"][path]
        assert CUDA_ONLY in message and "No backend type" not in message, message


def test_helpers_on_a_cpu_group_give_the_values_on_the_callers_device(results):
    a, b = (res["cpu"] for res in results)
    for res in (a, b):
        assert res["device"] == "cpu"
        torch.testing.assert_close(res["all_reduce"], torch.tensor([3.0, 6.0]))
        torch.testing.assert_close(res["all_gather"], torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
        assert res["mean"].item() == 1.5 and res["sum"].item() == 3.0
    torch.testing.assert_close(a["x_after"], torch.tensor([1.0, 2.0]))  # the input is left as it was


def test_score_selection_reward_is_the_accuracy_of_every_ranks_samples(results):
    """Rank 0 all right, rank 1 all wrong: both record 0.5 (before: 1.0 and 0.0, and each rank's ModelCheckpoint
    would rank checkpoints by its own rollouts)."""
    assert [res["cpu"]["selection"].item() for res in results] == [0.5, 0.5]


def test_seq_mean_sequence_count_over_ranks_equals_one_process(results, tiny_llama_dir):
    """seq-mean-token-mean with 1 row on rank 0 and 3 on rank 1: after DDP's average the gradient is that of one
    process with the 4 rows (each rank divides by the mean row count, 2, not by its own)."""
    expected = _seq_mean_grads(tiny_llama_dir, [0, 1, 2, 3])
    assert any(e.abs().sum() > 0 for e in expected)
    for got, e in zip(results[0]["cpu"]["seq_mean_grads"], expected):
        torch.testing.assert_close(got, e, atol=1e-6, rtol=1e-4)


RAW = re.compile(r"\b(?:dist|torch\.distributed)\.(all_reduce|all_gather|all_gather_into_tensor|reduce_scatter\w*|"
                 r"broadcast|reduce|all_to_all\w*|gather|scatter)\(")


def test_no_raw_tensor_collective_outside_the_helpers():
    """Every tensor collective of the project goes through training/distributed.py, which picks the group's
    device (object collectives, all_gather_object / broadcast_object_list, choose theirs themselves)."""
    offenders = []
    files = [p for top in ROOT.iterdir() if not top.name.startswith(".") and top.name != "tests"
             for p in ([top] if top.suffix == ".py" else top.rglob("*.py") if top.is_dir() else [])]
    assert len(files) > 50
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "training/distributed.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if RAW.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, offenders
