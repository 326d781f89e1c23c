"""The retrievers' grouped settings (retrieval/settings.py): bad values stop with the field named, saved
hyperparameters (dicts under LightningCLI) rebuild the same settings, and a module's settings are its own."""

import pytest

from retrieval.losses import InfoNCE
from training.settings import as_settings
from retrieval.settings import (BM25Settings, EncoderSettings, FusionSettings, GradCacheSettings, Negatives)


@pytest.mark.parametrize("build, message", [
    (lambda: EncoderSettings(pooling="max"), "encoder.pooling 'max'"),
    (lambda: EncoderSettings(precision="fp16"), "encoder.precision 'fp16'"),
    (lambda: EncoderSettings(dtype="float31"), "encoder.dtype 'float31'"),
    (lambda: Negatives(momentum=1.0), "negatives.momentum"),
    (lambda: Negatives(queue_size=-1), "negatives.queue_size"),
    (lambda: GradCacheSettings(chunk_size=0), "gradcache.chunk_size must be >= 1"),
    (lambda: FusionSettings(method="max"), "unknown fusion.method 'max'"),
    (lambda: FusionSettings(weights=[1.0]), r"fusion.weights: expected \[bm25, dense\]"),
    (lambda: InfoNCE(temperature=0.0), "temperature must be > 0"),
])
def test_bad_settings_name_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_contrastive_retriever_checks_its_arguments_before_loading_anything():
    from lightning_modules import ContrastiveRetriever

    with pytest.raises(ValueError, match="lora .*expected the keys r"):
        ContrastiveRetriever(lora={"rank": 8})
    with pytest.raises(ValueError, match="unknown similarity 'l2'"):
        ContrastiveRetriever(similarity="l2")
    with pytest.raises(ValueError, match="needs shared_encoder=True"):
        ContrastiveRetriever(shared_encoder=False, negatives=Negatives(queue_size=4))


def test_saved_dicts_rebuild_the_settings_and_defaults_are_not_shared():
    assert as_settings({"k1": 1.2, "stopwords": None}, BM25Settings) == BM25Settings(k1=1.2, stopwords=None)
    assert as_settings(None, BM25Settings) is None
    default = Negatives()
    own = as_settings(default, Negatives)
    own.queue_in_batch = True
    assert own == Negatives(queue_in_batch=True) and default == Negatives()


def test_a_module_rebuilt_from_its_hyperparameters_has_the_same_settings_and_loss():
    """What an FSDP2 export and load_from_checkpoint do: the class called with the saved hyperparameters, which
    LightningCLI gives as dicts ({class_path, init_args} for the loss)."""
    from lightning_modules import ContrastiveRetriever

    saved = {"encoder": {"name_or_path": "x", "passage_max_length": 32}, "negatives": {"queue_size": 8},
             "loss": {"class_path": "retrieval.losses.InfoNCE", "init_args": {"temperature": 0.2}},
             "gradcache": {"chunk_size": 2}, "index": {"factory": "HNSW32"}}
    module = ContrastiveRetriever(**saved)
    assert module.settings == EncoderSettings("x", passage_max_length=32)
    assert module.negatives.queue_size == 8 and module.gradcache.chunk_size == 2
    assert module.index_settings.factory == "HNSW32" and not module.automatic_optimization
    assert isinstance(module.loss, InfoNCE) and module.loss.temperature == 0.2
