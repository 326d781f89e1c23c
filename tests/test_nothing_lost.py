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


# -- atomic checkpoints --------------------------------------------------------------------------------------
MIB = 1 << 20


class _FullDisk:
    """Where a tmpfs cannot be mounted (not root): files opened for writing under ``folder`` fail with ENOSPC
    once the folder would hold more than ``capacity`` bytes (shutil's sendfile copy is switched off so that every
    byte goes through ``write``)."""

    def __init__(self, folder: Path, capacity: int, monkeypatch):
        import builtins
        import shutil

        self.folder, self.capacity, self._open = folder.resolve(), capacity, builtins.open
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)

    def open(self, file, mode="r", *args, **kwargs):
        f = self._open(file, mode, *args, **kwargs)
        if isinstance(file, (str, Path)) and any(c in mode for c in "wa") and \
                Path(file).resolve().is_relative_to(self.folder):
            return _Limited(f, self)
        return f


class _Limited:
    def __init__(self, f, disk):
        self._f, self._disk = f, disk

    def write(self, data):
        import errno

        used = sum(p.stat().st_size for p in self._disk.folder.rglob("*") if p.is_file())
        room = self._disk.capacity - used
        if len(data) > room:
            self._f.write(bytes(memoryview(data)[:max(room, 0)]))
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture(params=["tmpfs", "simulated"])
def small_fs(request, tmp_path, monkeypatch):
    """A 1 MiB filesystem (a tmpfs where it can be mounted; else, and for the "simulated" parameter, a simulated
    full disk, see _FullDisk, so that path is checked on every machine), and ``$TMPDIR`` on another filesystem
    (the pytest folder), empty: a cluster's scratch or NFS checkpoint folder."""
    import subprocess
    import tempfile

    folder, tmpdir = tmp_path / "small", tmp_path / "tmpdir"
    folder.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    mounted = request.param == "tmpfs" and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        _FullDisk(folder, MIB, monkeypatch)
    yield folder, tmpdir
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _checkpoint_io(dpr_args):
    from train import cli_main

    return cli_main([*dpr_args, "--trainer.logger", "false"], run=False).trainer.strategy.checkpoint_io


def test_a_full_disk_keeps_the_previous_checkpoint_whole(dpr_args, small_fs):  # noqa: F811
    """last.ckpt of 256 KiB, then one of 1 MiB on the 1 MiB filesystem: the save fails, and the previous
    last.ckpt is whole, nothing else is left in the folder nor in $TMPDIR."""
    folder, tmpdir = small_fs
    io = _checkpoint_io(dpr_args)
    io.save_checkpoint({"w": torch.zeros(64 * 1024)}, folder / "last.ckpt")
    with pytest.raises(OSError, match="No space left"):  # Lightning's own save: a RuntimeError of torch's
        io.save_checkpoint({"w": torch.ones(256 * 1024)}, folder / "last.ckpt")
    assert torch.equal(torch.load(folder / "last.ckpt")["w"], torch.zeros(64 * 1024))
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"] and not list(tmpdir.iterdir())


KILL_AT_WRITE = """
import builtins, json, os, shutil, signal, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
from train import cli_main
folder, limit = Path({folder!r}).resolve(), {limit}
io = cli_main(json.loads({args!r}), run=False).trainer.strategy.checkpoint_io
import torch
io.save_checkpoint({{"w": torch.zeros(64 * 1024)}}, folder / "last.ckpt")
shutil._USE_CP_SENDFILE = False  # every byte through write()
real_open, written = builtins.open, [0]
class Killed:
    def __init__(self, f): self._f = f
    def write(self, data):
        written[0] += len(data)
        if written[0] > limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._f.write(data)
    def __enter__(self): return self
    def __exit__(self, *a): self._f.close()
    def __getattr__(self, n): return getattr(self._f, n)
def killing_open(file, mode="r", *a, **k):
    f = real_open(file, mode, *a, **k)
    inside = isinstance(file, (str, Path)) and Path(file).resolve().is_relative_to(folder)
    return Killed(f) if inside and "w" in mode else f
builtins.open = killing_open
io.save_checkpoint({{"w": torch.ones(128 * 1024)}}, folder / "last.ckpt")
"""


@pytest.mark.parametrize("small_fs", ["tmpfs"], indirect=True)
def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(dpr_args, small_fs, tmp_path):  # noqa: F811
    """A process SIGKILLed after writing 200 KiB of its second last.ckpt (512 KiB) into the checkpoint folder:
    the first last.ckpt is whole; the killed write's temporary file is not under a final name, and the next
    save removes it; $TMPDIR holds nothing."""
    import json
    import os
    import subprocess
    import sys

    folder, tmpdir = small_fs
    root = Path(__file__).resolve().parent.parent
    script = KILL_AT_WRITE.format(root=str(root), tests=str(root / "tests"), folder=str(folder),
                                  limit=200 * 1024, args=json.dumps([*dpr_args, "--trainer.logger", "false"]))
    child = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"})
    assert child.returncode == -9, child.stderr[-2000:]
    assert torch.equal(torch.load(folder / "last.ckpt")["w"], torch.zeros(64 * 1024))
    assert not list(tmpdir.iterdir())
    leftovers = [p.name for p in folder.iterdir() if p.name != "last.ckpt"]
    assert all(n.startswith(".last.ckpt.tmp-") for n in leftovers)
    from callbacks.atomic_checkpoint import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, folder / "last.ckpt")
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]


# -- atomic exports, file modes -------------------------------------------------------------------------------
def test_an_export_interrupted_after_the_weights_leaves_no_folder_that_loads(dpr_args, tmp_path, monkeypatch):  # noqa: F811
    """The tokenizer's save fails after model.safetensors was written: the run fails, no ``export`` folder
    exists; with the clean-up skipped too (a kill), the only folder left is the partial one, which holds the
    weights and which our loader refuses, naming it."""
    import shutil

    from transformers import PreTrainedTokenizerBase

    from retrieval.encoders import Encoder
    from train import cli_main

    def killed(self, path, *args, **kwargs):
        assert (Path(path) / "model.safetensors").is_file()
        raise KeyboardInterrupt("killed during the export")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # a kill runs no clean-up
    with pytest.raises(KeyboardInterrupt):
        cli_main(dpr_args)
    runs = tmp_path / "runs"
    assert not [p for p in runs.rglob("*export*") if not p.name.startswith(".export.partial-")]
    (partial,) = runs.rglob(".export.partial-*")
    assert (partial / "model.safetensors").is_file()
    with pytest.raises(OSError, match="interrupted before it was complete"):
        Encoder(str(partial))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_an_export_is_complete_marked_and_readable_as_the_umask_allows(dpr_args, tmp_path, umask):  # noqa: F811
    """transformers writes model.safetensors with mode 0600: exported files get 0666 less the umask."""
    import os

    from retrieval.encoders import Encoder
    from train import cli_main

    old = os.umask(umask)
    try:
        cli_main(dpr_args)
    finally:
        os.umask(old)
    (export,) = (tmp_path / "runs").rglob("export")
    assert (export / "ragkit_export.json").is_file() and not (export / "RAGKIT_EXPORT_INCOMPLETE").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in export.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o666 & ~umask and set(modes.values()) == {0o666 & ~umask}
    assert Encoder(str(export)).model is not None


# -- run folders --------------------------------------------------------------------------------------------------
def test_a_failed_run_leaves_no_version_folder(dpr_args, tmp_path):  # noqa: F811
    """A run that stops before training (a batch larger than the training set) leaves no runs/<name>/version_N
    holding only its start files (config.yaml, an empty TensorBoard file)."""
    with pytest.raises(SystemExit):
        main([*dpr_args, "--data.init_args.batch_size", "32"])
    assert not list((tmp_path / "runs").rglob("version_*"))


def _score_stage1_args(tiny_llama_dir, root):
    return ["--config", "configs/score_stage1_arithmetic.yaml", "--model.init_args.lm.name_or_path",
            tiny_llama_dir, "--model.init_args.sampling.group_size", "2", "--model.init_args.sampling.max_turn_tokens", "4",
            "--model.init_args.sampling.max_response_tokens", "60", "--model.init_args.log_samples.count", "0",
            "--data.init_args.options", "{num_problems: 8}", "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_two_runs_of_a_score_config_keep_their_own_folders_and_stage2_finds_the_latest(tiny_llama_dir, tmp_path):
    """SCoRe Stage I twice: version_0 and version_1, each with its own best.ckpt, last.ckpt and config.yaml;
    ``latest`` points at the second, which is where the shipped Stage II config's init_from leads."""
    import yaml

    from train import cli_main

    root = tmp_path / "runs"
    for _ in range(2):
        cli_main(["fit", *_score_stage1_args(tiny_llama_dir, root)])
    base = root / "score_stage1_arithmetic"
    versions = sorted(p.name for p in base.glob("version_*"))
    assert versions == ["version_0", "version_1"]
    for v in versions:
        assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (base / v / "checkpoints").iterdir()}
        assert (base / v / "config.yaml").is_file()
    assert (base / "latest").resolve() == (base / "version_1").resolve()
    stage2 = yaml.safe_load(Path("configs/score_stage2_arithmetic.yaml").read_text())
    init_from = Path(stage2["model.init_args.init_from"])
    assert init_from.parts[:3] == ("runs", "score_stage1_arithmetic", "latest")
    assert (base / Path(*init_from.parts[2:])).resolve() == (base / "version_1/checkpoints/best.ckpt").resolve()


def test_an_export_never_replaces_another(tmp_path):
    """With ``--trainer.logger false`` every default run exports beside ./ : the second gets export-1."""
    from training.atomic_files import export_atomically

    def write(text):
        return lambda folder: (folder / "model.txt").write_text(text)

    assert export_atomically(tmp_path / "export", write("first")) == tmp_path / "export"
    assert export_atomically(tmp_path / "export", write("second")) == tmp_path / "export-1"
    assert (tmp_path / "export" / "model.txt").read_text() == "first"
    assert (tmp_path / "export-1" / "model.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export-1"]


# -- a port clash ---------------------------------------------------------------------------------------------------
def _tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``tag``."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag.encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_port_clash_fails_fast_and_leaves_no_rank_behind(tiny_bert_dir, tiny_beir_dir, tmp_path):
    """A 2-process DDP run whose MASTER_PORT another process holds: rank 0 cannot listen and fails; rank 1,
    started by Lightning's launcher, would wait on that port for the 30-minute store timeout, re-parented to
    init. It must be gone with rank 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import uuid

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(8)
    tag = f"RAGKIT_PORT_CLASH_TEST={uuid.uuid4().hex}"
    key, value = tag.split("=")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(held.getsockname()[1]), key: value}
    args = ["fit", "--config", "configs/dpr_scifact.yaml", "--model.init_args.encoder.name_or_path", tiny_bert_dir,
            "--data.init_args.data_dir", str(tiny_beir_dir), "--data.init_args.batch_size", "2",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=root, env=env, capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode != 0
        assert "EADDRINUSE" in proc.stderr or "address already in use" in proc.stderr.lower(), proc.stderr[-3000:]
        deadline = time.monotonic() + 10
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _tagged(tag), "a rank outlived the failed run"
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
        held.close()
