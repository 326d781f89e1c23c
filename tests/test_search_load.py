"""The search server sized for a rollout batch (issue 22, item 8): 256 clients at once get every answer (the
listen backlog of 5 reset half of 100), the client retries with backoff while a server is not up yet, and a
SearchR1 fit against a dead server ends with one summary of its failed searches (and a counter logged)."""

import socket
import threading
import time

import lightning as L
import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessorList

from rl.search import HTTPSearch, Passage, SearchServer, serve

pytestmark = pytest.mark.usefixtures("one_thread")


def echo(queries, k):
    return [[Passage(f"d-{q}", "t", f"text of {q}", 1.0)] for q in queries]


def test_256_concurrent_clients_all_answered_without_retries():
    server = serve(echo, port=0, block=False)
    assert isinstance(server, SearchServer) and server.request_queue_size >= 256
    url = "http://%s:%d/retrieve" % server.server_address
    n = 256
    start, results, errors = threading.Barrier(n), [None] * n, []

    def client(i):
        start.wait()
        try:
            results[i] = HTTPSearch(url, timeout=30, retries=0)([f"q{i}"], 1)
        except Exception as err:  # noqa: BLE001 (counted)
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        server.shutdown()
        server.server_close()
    assert errors == []
    assert [r[0][0].id for r in results] == [f"d-q{i}" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_until_a_late_server_is_up():
    port = free_port()
    client = HTTPSearch(f"http://127.0.0.1:{port}/retrieve", timeout=5, retries=6, backoff=0.05)
    servers = []
    threading.Timer(0.4, lambda: servers.append(serve(echo, port=port, block=False))).start()
    try:
        hits = client(["late"], 1)
    finally:
        time.sleep(0.5)  # the timer has fired by now
        for s in servers:
            s.shutdown()
            s.server_close()
    assert hits[0][0].id == "d-late" and client.retried >= 1


def test_client_gives_up_after_its_retries_naming_the_tries():
    client = HTTPSearch(f"http://127.0.0.1:{free_port()}/retrieve", timeout=5, retries=2, backoff=0.01)
    with pytest.raises(ConnectionError, match=r"/retrieve: 3 tries failed, the last with URLError"):
        client(["nobody"], 1)
    assert client.retried == 2


def test_client_does_not_retry_a_bad_request():
    import urllib.error

    server = serve(echo, port=0, block=False)
    client = HTTPSearch("http://%s:%d/nope" % server.server_address, timeout=5, retries=3, backoff=0.01)
    try:
        with pytest.raises(urllib.error.HTTPError, match="404"):
            client(["q"], 1)
    finally:
        server.shutdown()
        server.server_close()
    assert client.retried == 0


def test_search_r1_fit_against_a_dead_server_ends_with_a_summary(tiny_llama_dir, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from datamodules.rl_prompts import RLPromptDataModule
    from lightning_modules.search_r1 import SearchR1
    from rl.envs import SearchEnv
    from rl.settings import PolicyLoss, SampleLog, Sampling
    from training.settings import LM
    from test_rl_rollout import ScriptedPolicy

    def script(context: str) -> str:  # search once, then answer
        return "<search>capital</search>" if "<information>" not in context else "<answer>Paris</answer>"

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join('{"question": "question %d", "answers": ["Paris"]}\n' % i for i in range(2)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    dead = HTTPSearch(f"http://127.0.0.1:{free_port()}/retrieve", timeout=5, retries=1, backoff=0.01)
    model = SearchR1(LM(tiny_llama_dir), env=SearchEnv(dead, k=1, max_searches=1), template="{question}", chat=False,
                     sampling=Sampling(group_size=2, max_turn_tokens=12, max_response_tokens=60, generation_kwargs={
                         "logits_processor": LogitsProcessorList([ScriptedPolicy(tokenizer, script)])}),
                     loss=PolicyLoss(kl_coef=0.0), log_samples=SampleLog(count=0))
    logger = CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"SearchR1: EVERY search of this run failed \(2 of 2\)"):
        trainer.fit(model, RLPromptDataModule(str(qa), batch_size=1, test_file=None))
    logger.save()
    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, [r.split(",") for r in rows if r.split(",")[header.index("fit/failed_searches")]][-1]))
    assert float(last["fit/failed_searches"]) == 2 and float(last["fit/searches"]) == 2
    assert torch.equal(model.search_totals, torch.tensor([2, 2]))


def test_search_r1_summary_counts_a_partial_failure(tiny_llama_dir, recwarn):
    """Some searches failed, not all: still one warning at the end of fit, with the count."""
    from lightning_modules.search_r1 import SearchR1
    from rl.envs import SearchEnv
    from rl.settings import PolicyLoss, SampleLog, Sampling
    from training.settings import LM

    model = SearchR1(LM(tiny_llama_dir), env=None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model.trainer = trainer
    model.search_totals += torch.tensor([10, 3])
    with pytest.warns(UserWarning, match=r"SearchR1: 3 of 10 searches of this run failed \(30.0%\)"):
        model.on_fit_end()
