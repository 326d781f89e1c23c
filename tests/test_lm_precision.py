"""The LM side follows the encoders' precision rule (training.precision.resolve_precision): bf16 autocast only
where the CPU has native bf16, logged, overridable by ``$RAGKIT_PRECISION`` and a module option; every LM
forward (generation, rollouts, log-probs, scoring, the supervised loss) runs in the model's precision, so RL's
old, new and reference log-probs agree exactly and the first on-policy ratio is 1 under bf16 too.

bf16 is forced here on whatever CPU runs the tests (on AVX2-only CPUs it is emulated and slow): the models
are 2-layer, hidden-32 and the batches a few rows. Tolerance: on the tiny Llama below the largest
|log p_bf16 - log p_fp32| measured 1.0e-3 (AVX2, torch 2.13; mean log p about -10); the tests allow 5e-3."""

import logging

import pytest
import torch

import training.precision as precision_rule
from training.settings import LM
from generation.generate import generate
from training.models import load_causal_lm
from training.precision import lm_autocast, lm_precision, set_precision
from generation.logprobs import sequence_logprobs
from generation.tokens import pad
from training.precision import PRECISION_ENV
from rl.policy import ReferencePolicy
from rl.rollout import rollout
from rl.settings import PolicyLoss, Updates
from rl.update import update

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 5e-3
PROMPTS = ["the capital of france is", "a much longer prompt about many things in the world today", "x"]


@pytest.fixture
def lm(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, device="cpu", precision="fp32")


def linear_dtypes(model, fn) -> set[torch.dtype]:
    """dtypes of the first attention projection's outputs while ``fn`` runs."""
    seen = set()
    layer = model.get_base_model() if hasattr(model, "get_base_model") else model
    handle = layer.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
    try:
        fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_and_is_logged(monkeypatch, caplog, lm, native_bf16, expected):
    model, _ = lm
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision_rule, "cpu_has_fast_bf16", lambda: native_bf16)
    precision_rule._logged.clear()
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert lm_precision(set_precision(model, "auto")) == expected
        assert lm_precision(set_precision(model, None)) == expected   # no env var: auto
    assert f"LM precision: {expected}" in caplog.text and PRECISION_ENV in caplog.text
    monkeypatch.setenv(PRECISION_ENV, "fp32" if native_bf16 else "bf16")  # the env var overrides auto
    assert lm_precision(model) == ("fp32" if native_bf16 else "bf16")
    assert lm_precision(set_precision(model, expected)) == expected       # and the option overrides the env var


def test_bad_precision_is_refused(lm):
    with pytest.raises(ValueError, match="'fp16'.*auto, fp32, bf16"):
        set_precision(lm[0], "fp16")


def test_every_lm_path_computes_in_the_models_precision(lm):
    model, tok = lm
    ids, am = pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id, "left")
    paths = {"log-probs": lambda: sequence_logprobs(model, ids, am),
             "generate": lambda: generate(model, tok, PROMPTS, max_new_tokens=2, stop_strings=None),
             "rollout": lambda: rollout(model, tok, PROMPTS, None, max_turn_tokens=2, max_response_tokens=2)}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        set_precision(model, precision)
        for name, fn in paths.items():
            assert linear_dtypes(model, fn) == {dtype}, (precision, name)
    set_precision(model, "fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 opens no context: the caller's autocast stays
        assert linear_dtypes(model, paths["log-probs"]) == {torch.bfloat16}


def test_bf16_logprobs_and_greedy_match_fp32(lm):
    model, tok = lm
    ids, am = pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id, "left")
    out = {}
    for precision in ("fp32", "bf16"):
        set_precision(model, precision)
        with torch.no_grad():
            lp = sequence_logprobs(model, ids, am, temperature=0.7).logprobs
        out[precision] = (lp, generate(model, tok, PROMPTS, max_new_tokens=6, stop_strings=None))
    (lp32, greedy32), (lp16, greedy16) = out["fp32"], out["bf16"]
    assert lp16.dtype == torch.float32
    diff = ((lp16 - lp32).abs() * am).max().item()
    assert 0 < diff < TOL  # bf16 did run, and agrees within the tolerance
    # Greedy: each token bf16 picks is one fp32 ranks first, up to the tolerance (ties may break either way)
    set_precision(model, "fp32")
    for prompt, text in zip(PROMPTS, greedy16):
        p_ids, g_ids = tok(prompt)["input_ids"], tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + g_ids])).logits[0].float(), -1)
        steps = logp[len(p_ids) - 1:len(p_ids) + len(g_ids) - 1]
        picked = steps.gather(-1, torch.tensor(g_ids)[:, None])[:, 0]
        assert (steps.max(-1).values - picked).max() < TOL
    assert sum(a == b for a, b in zip(greedy16, greedy32)) >= 2


def run_update(model, r, cfg, ref=None):
    return update(model, r, torch.tensor([1.0, -0.5, 0.5]), cfg, Updates(1, None, 2), lambda loss: loss.backward(),
                  model.zero_grad, temperature=0.7, ref_logprobs=ref)  # the rollouts' sampling temperature


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_old_new_and_reference_logprobs_share_the_precision(tiny_llama_dir, precision):
    """Under either precision the rollout's old log-probs, the update's new ones and a copied reference's are
    the same numbers: the first on-policy ratio is exactly 1 and the KL to an unchanged reference is 0."""
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu", precision=precision,
                                lora={"r": 4, "alpha": 8, "dropout": 0.5})
    with torch.no_grad():  # adapters that matter (peft initialises B to 0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    torch.manual_seed(0)
    r = rollout(model, tok, PROMPTS, None, max_turn_tokens=5, max_response_tokens=5, temperature=0.7)
    reference = ReferencePolicy("copy", model)
    ref = reference.logprobs(model, r.tokens, 0.7, start=min(r.prompt_lengths))
    assert torch.equal(ref.cpu(), r.old_logprobs)
    stats = run_update(model, r, PolicyLoss(kl_coef=0.1), ref)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(0, abs=1e-7)
    assert stats["clip_fraction"] == 0.0


def test_bf16_old_logprobs_differ_from_fp32_ones(tiny_llama_dir):
    """The check above can fail: fp32 log-probs of a bf16 rollout are not its old log-probs."""
    model, tok = load_causal_lm(tiny_llama_dir, device="cpu", precision="bf16")
    torch.manual_seed(0)
    r = rollout(model, tok, PROMPTS, None, max_turn_tokens=5, max_response_tokens=5, temperature=0.7)
    with lm_autocast(set_precision(model, "fp32")), torch.no_grad():
        lp32 = sequence_logprobs(model, r.input_ids, r.attention_mask, temperature=0.7).logprobs * r.loss_mask
    assert not torch.equal(lp32, r.old_logprobs)
    assert (lp32 - r.old_logprobs).abs().max() < TOL


def test_modules_pass_their_precision_option_to_the_lm(tiny_llama_dir):
    from lightning_modules.score import SCoRe

    module = SCoRe(LM(tiny_llama_dir, precision="bf16"), task="arithmetic")
    module.configure_model()
    assert lm_precision(module.policy) == "bf16"
    if module.reference.model is not None:  # a frozen copy computes in the policy's precision
        assert lm_precision(module.reference.model) == "bf16"


def test_lsr_score_cache_key_holds_the_lm_precision(lm):
    """bf16 scores must not be served from (or stored in) a cache of fp32 ones; fp32 keys stay as they were."""
    from retrieval.lsr_lm import FrozenLM

    model, tok = lm
    fp32 = FrozenLM(set_precision(model, "fp32"), tok).fingerprint
    bf16 = FrozenLM(set_precision(model, "bf16"), tok).fingerprint
    assert bf16 != fp32 and bf16.startswith(fp32)
