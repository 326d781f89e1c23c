"""Score fusion against values computed by hand from the formulas in retrieval/fusion.py."""

import math

import pytest

from retrieval.fusion import mix_prior, normalize_scores, reciprocal_rank_fusion, weighted_fusion

RUN1 = {"q": {"a": 3.0, "b": 1.0, "c": 2.0}}
RUN2 = {"q": {"b": 10.0, "d": 0.0}}


def test_minmax_weighted_sum_by_hand():
    # run1 min-max: a = (3-1)/2 = 1, b = 0, c = 0.5; run2: b = 1, d = 0. Missing -> the run's floor 0.
    # weights 0.6 / 0.4: a = 0.6, b = 0.4, c = 0.3, d = 0
    fused = weighted_fusion([RUN1, RUN2], [0.6, 0.4], "minmax")
    assert fused["q"] == pytest.approx({"a": 0.6, "b": 0.4, "c": 0.3, "d": 0.0})
    assert list(fused["q"]) == ["a", "b", "c", "d"]
    assert list(weighted_fusion([RUN1, RUN2], [0.6, 0.4], k=2)["q"]) == ["a", "b"]


def test_zscore_by_hand():
    # run1 mean 2, population std sqrt(((1)^2 + (-1)^2 + 0)/3) = sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert normalize_scores(RUN1["q"], "zscore") == pytest.approx({"a": 1 / s, "b": -1 / s, "c": 0.0})
    # run2: mean 5, std 5 -> b = 1, d = -1. Fused (equal weights), missing -> floor of that run:
    # a = 1/s + (-1) ; b = -1/s + 1 ; c = 0 + (-1) ; d = (-1/s) + (-1)
    fused = weighted_fusion([RUN1, RUN2], normalization="zscore")["q"]
    assert fused == pytest.approx({"a": 1 / s - 1, "b": 1 - 1 / s, "c": -1.0, "d": -1 / s - 1})
    assert normalize_scores({"x": 2.0, "y": 2.0}, "minmax") == {"x": 0.0, "y": 0.0}


def test_rrf_by_hand():
    # run1 ranks: a 1, c 2, b 3; run2: b 1, d 2; k = 60
    fused = reciprocal_rank_fusion([RUN1, RUN2], k_rrf=60)["q"]
    assert fused == pytest.approx({"a": 1 / 61, "b": 1 / 63 + 1 / 61, "c": 1 / 62, "d": 1 / 62})
    assert next(iter(fused)) == "b"
    weighted = reciprocal_rank_fusion([RUN1, RUN2], k_rrf=1, weights=[2, 1])["q"]
    assert weighted == pytest.approx({"a": 2 / 2, "b": 2 / 4 + 1 / 2, "c": 2 / 3, "d": 1 / 3})


def test_mix_prior_by_hand():
    run = {"q": {"a": 3.0, "b": 1.0}}
    prior = {"a": 0.1, "b": 0.3, "z": 0.6}
    # run min-max: a 1, b 0; prior over the candidates min-max: a 0, b 1; weight 0.25: a = 0.75, b = 0.25
    assert mix_prior(run, prior, 0.25)["q"] == pytest.approx({"a": 0.75, "b": 0.25})
    # log prior: log 0.1 < log 0.3, min-max again gives a 0, b 1 -> weight 0.75: a = 0.25, b = 0.75
    assert mix_prior(run, prior, 0.75, log_prior=True)["q"] == pytest.approx({"a": 0.25, "b": 0.75})
    with pytest.raises(KeyError, match="no prior for 1 documents"):
        mix_prior({"q": {"a": 1.0, "unknown": 2.0}}, prior, 0.5)


def test_errors():
    with pytest.raises(ValueError, match="2 runs but 1 weights"):
        weighted_fusion([RUN1, RUN2], [1.0])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_scores({"a": 1.0}, "l2")
    with pytest.raises(ValueError, match="no runs"):
        reciprocal_rank_fusion([])
