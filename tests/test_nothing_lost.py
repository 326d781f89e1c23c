"""Nothing lost, nothing broken trusted (issue 22): a diverged run stops and exports nothing; checkpoints and
exports are written atomically beside their final name; runs get fresh folders; failed runs leave no debris.
Through the real entry point, in-process, with tiny models. See docs/bad_inputs.md."""

import re
from pathlib import Path

import torch

import pytest

from test_cli_errors import dpr_args, last_lines  # noqa: F401 (a fixture)
from train import main

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a diverged run ----------------------------------------------------------------------------------------------
def test_a_diverged_run_stops_with_the_step_and_exports_nothing(dpr_args, tmp_path, capsys):  # noqa: F811
    """DPR at lr 1e6: the first step blows the weights up, the next loss or gradient is not finite. The run
    stops there (exit 1) naming the step, the value and what to try; no test metrics, no export, and the last
    weights a checkpoint could hold are finite."""
    with pytest.raises(SystemExit) as exit_:
        main([*dpr_args, "--model.init_args.optimizer.init_args.lr", "1e6", "--trainer.max_epochs", "3"])
    assert exit_.value.code == 1
    last = last_lines(capsys, 1)[0]
    assert last.startswith("error: RuntimeError: training diverged at step ")
    assert re.search(r"at step \d+ \(epoch 0\): (the loss is (nan|inf)|the gradient of \S+ has norm (nan|inf))", last)
    assert "lower learning rate" in last and "32-true" in last and "gradient_clip_val" in last
    runs = tmp_path / "runs"
    assert not list(runs.rglob("export")) and not list(runs.rglob("test_metrics.json"))


def test_the_first_non_finite_gradient_is_named():
    from callbacks.divergence import first_non_finite_grad

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net(torch.ones(1, 2)).sum().backward()
    assert first_non_finite_grad(net) is None
    net[1].weight.grad[0, 1] = float("inf")
    assert first_non_finite_grad(net) == ("1.weight", float("inf"))
    net[0].bias.grad[0] = float("nan")
    name, norm = first_non_finite_grad(net)
    assert name == "0.bias" and norm != norm
