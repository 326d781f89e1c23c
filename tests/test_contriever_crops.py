"""Contriever random crops and token deletion (retrieval.cropping) and the crop-pair DataModule."""

import random

import pytest

from retrieval.cropping import crop_pair, delete_tokens, random_crop


def test_crop_length_and_span_by_hand():
    tokens = list(range(10))
    # ratio fixed at 0.5: length = int(0.5 * 10) = 5, a contiguous span starting in {0, ..., 5}
    starts = set()
    for seed in range(200):
        crop = random_crop(tokens, 0.5, 0.5, random.Random(seed))
        assert len(crop) == 5 and crop == list(range(crop[0], crop[0] + 5))
        starts.add(crop[0])
    assert starts == set(range(6))
    # ratio in [0.1, 0.5] on 100 tokens: lengths int(r * 100) cover 10..50
    lengths = {len(random_crop(list(range(100)), 0.1, 0.5, random.Random(s))) for s in range(2000)}
    assert min(lengths) >= 10 and max(lengths) <= 50 and len(lengths) > 30
    # a 3-token document with ratio 0.1: int(0.3) = 0 -> at least one token
    assert len(random_crop([7, 8, 9], 0.1, 0.1, random.Random(0))) == 1


def test_deletion_rate_and_never_empty():
    rng = random.Random(0)
    kept = delete_tokens(list(range(20000)), 0.1, rng)
    assert abs(len(kept) / 20000 - 0.9) < 0.01
    assert kept == sorted(kept)                          # order preserved
    assert delete_tokens([1], 0.99, random.Random(1)) == [1]          # kept or re-added: never empty
    assert delete_tokens([5, 6], 0.0, rng) == [5, 6]
    with pytest.raises(ValueError):
        delete_tokens([1], 1.0, rng)
    with pytest.raises(ValueError):
        random_crop([1, 2], 0.6, 0.5, rng)


def test_pair_is_two_independent_views():
    tokens = [f"w{i}" for i in range(200)]
    q, k = crop_pair(tokens, random.Random(3), 0.1, 0.5, deletion_prob=0.0)
    assert q != k
    for view in (q, k):
        start = tokens.index(view[0])
        assert view == tokens[start:start + len(view)]


def test_crop_datamodule(tiny_beir_dir):
    from datamodules import CropPairsDataModule

    dm = CropPairsDataModule(str(tiny_beir_dir), ratio_min=0.5, ratio_max=0.5, min_words=8, batch_size=4, seed=1)
    dm.setup("fit")
    # every fixture document has 9 words ("title i document i about topic t and wordi"): all kept
    assert dm.skipped_doc_ids == [] and len(dm.train_dataset) == 12
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"doc_ids", "queries", "passages"} and len(batch["queries"]) == 4
    for doc_id, q, p in zip(batch["doc_ids"], batch["queries"], batch["passages"]):
        text = dm.passages[doc_id]
        assert len(q.split()) == 4 and q in text and p in text          # int(0.5 * 9) = 4 contiguous words
    first, second = dm.train_dataset[0], dm.train_dataset[0]
    assert first["doc_id"] == second["doc_id"]                         # same document, fresh crops per draw
    assert len(dm.test_dataloader()) == 2 and dm.eval_qrels("test")["q6"] == {"d6": 1}
    with pytest.raises(ValueError, match="no document .* has >= 10 words"):
        CropPairsDataModule(str(tiny_beir_dir), min_words=10).setup("fit")
