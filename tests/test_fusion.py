"""Fused logistic score: beats each single score, is calibrated, round-trips through JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msdmatch.errors import ModelError, ParameterError
from msdmatch.kernels.fusion import (
    ALL_FEATURES,
    DEFAULT_THRESHOLD,
    FEATURE_NAMES,
    FusionModel,
    dhs_ratio,
    expected_calibration_error,
    features_for,
    fit_fusion,
    predict_proba,
    read_threshold,
    reliability_curve,
)


def make_candidates(rng: np.random.Generator, n_queries: int, n_cand: int = 10) -> tuple[dict, np.ndarray]:
    """Each query has one true match among n_cand; every score is noisy on its own and
    shifted per query (query difficulty), so no single score separates them."""
    q = np.repeat(np.arange(n_queries), n_cand)
    y = np.zeros(q.size, np.int64)
    y[np.arange(n_queries) * n_cand + rng.integers(0, n_cand, n_queries)] = 1
    shift = np.repeat(rng.normal(0, 0.15, n_queries), n_cand)
    verify = 0.75 - 0.2 * y + shift + rng.normal(0, 0.12, q.size)
    # a candidate's bits resemble everything to a varying degree (its matrix mean):
    # the raw DHS score carries that, the ratio does not
    matrix_mean = rng.uniform(11, 19, q.size)
    dhs = matrix_mean * np.exp(-0.5 - 0.25 * y + shift + rng.normal(0, 0.25, q.size))
    pse = np.exp(1.5 - 0.5 * y + rng.normal(0, 0.5, q.size))
    verify_std = 0.7 - 0.15 * y + shift + rng.normal(0, 0.15, q.size)
    verify_dhs = 0.8 - 0.15 * y + shift + rng.normal(0, 0.15, q.size)
    verify_high = 0.8 - 0.12 * y + shift + rng.normal(0, 0.15, q.size)
    missing = rng.random(q.size) < 0.02  # a few unverified candidates
    verify[missing] = verify_std[missing] = verify_dhs[missing] = verify_high[missing] = np.nan
    return {"query_id": q, "verify_score": verify, "dhs_score": dhs, "pse_distance": pse,
            "dhs_matrix_mean": matrix_mean, "verify_std_score": verify_std, "verify_dhs_score": verify_dhs,
            "verify_high_score": verify_high}, y


def top1(score: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    score = np.where(np.isnan(score), np.inf, score)
    best = [np.argmin(np.where(groups == g, score, np.inf)) for g in np.unique(groups)]
    return float(np.mean(y[best]))


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Probability a positive scores lower than a negative (lower = better)."""
    score = np.where(np.isnan(score), np.inf, score)
    pos, neg = score[y == 1], score[y == 0]
    return float(np.mean(pos[:, None] < neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def test_fusion_beats_single_scores_and_is_calibrated(rng):
    train, y_tr = make_candidates(rng, 1500)
    test, y_te = make_candidates(rng, 600)
    model = fit_fusion(features_for(train), y_tr, groups=train["query_id"], l2=1.0)
    p = predict_proba(model, features_for(test))
    fused_top1 = top1(-p, y_te, test["query_id"])
    fused_auc = auc(-p, y_te)
    for name in ("verify_score", "verify_std_score", "verify_dhs_score", "verify_high_score", "dhs_score",
                 "pse_distance"):
        assert fused_top1 > top1(test[name], y_te, test["query_id"]) + 0.02, name
        assert fused_auc > auc(test[name], y_te), name
    assert expected_calibration_error(p, y_te) < 0.05
    assert 0 < model.metrics["top1"] <= 1


def test_json_round_trip(rng, tmp_path):
    cands, y = make_candidates(rng, 200)
    model = fit_fusion(features_for(cands), y, l2=0.5)
    again = FusionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    model.save(str(tmp_path / "fusion.json"))
    assert FusionModel.load(str(tmp_path / "fusion.json")) == model
    X = features_for(cands)
    np.testing.assert_array_equal(predict_proba(again, X), predict_proba(model, X))


def test_from_dict_refuses_other_versions(rng):
    cands, y = make_candidates(rng, 50)
    d = fit_fusion(features_for(cands), y).to_dict()
    with pytest.raises(ModelError, match="format_version 99.*newer msdmatch"):
        FusionModel.from_dict({**d, "format_version": 99})
    with pytest.raises(ModelError, match=r"format_version 3.*refit it with `scripts/fit_fusion_openset.sh`"):
        FusionModel.from_dict({**d, "format_version": 3})
    with pytest.raises(ModelError, match="threshold 1.5 is not a probability"):
        FusionModel.from_dict({**d, "threshold": 1.5})
    with pytest.raises(ModelError, match=r"features \['a'\]; this msdmatch reads format_version"):
        FusionModel.from_dict({**d, "feature_names": ["a"]})


def test_features_are_per_query():
    cands = {"query_id": np.array(["a", "a", "a", "b"]),
             "verify_score": np.array([0.5, 0.3, np.nan, 0.9]),
             "dhs_score": np.array([10.0, 12.0, 11.0, 5.0]),
             "pse_distance": np.array([1.0, 2.0, 4.0, 8.0]),
             "dhs_matrix_mean": np.array([5.0, 5.0, 5.0, 5.0]),
             "verify_std_score": np.array([0.4, 0.6, 0.7, 0.2]),
             "verify_dhs_score": np.array([0.9, np.nan, 0.5, 0.3]),
             "verify_high_score": np.array([0.6, 0.2, np.nan, 0.4])}
    X = features_for(cands, names=ALL_FEATURES[:17])
    assert X.shape == (4, 17)
    np.testing.assert_allclose(X[:, 0], [0.5, 0.3, 0.5, 0.9])  # NaN -> query's worst
    np.testing.assert_allclose(X[:, 3], [0.2, 0.0, 0.2, 0.0])
    np.testing.assert_allclose(X[:, 1], np.log([2.0, 2.4, 2.2, 1.0]), atol=1e-5)
    np.testing.assert_allclose(X[:, 4], [0.0, 0.4, 0.2, 0.0])
    np.testing.assert_allclose(X[:, 5], np.log([1.0, 2.0, 4.0, 1.0]), atol=1e-5)
    np.testing.assert_allclose(X[:, 6], [0.2, -0.2, 0.2, 0.0])
    np.testing.assert_array_equal(X[:, 7], [0, 0, 1, 0])
    np.testing.assert_allclose(X[:, 8:11], [[0.4, 0.0, -0.2], [0.6, 0.2, 0.2], [0.7, 0.3, 0.3], [0.2, 0, 0]])
    # NaN -> the query's worst (0.9), so candidate 2 is best by 0.4
    np.testing.assert_allclose(X[:, 11:14], [[0.9, 0.4, 0.4], [0.9, 0.4, 0.4], [0.5, 0.0, -0.4], [0.3, 0, 0]])
    np.testing.assert_allclose(X[:, 14:], [[0.6, 0.4, 0.4], [0.2, 0.0, -0.4], [0.6, 0.4, 0.4], [0.4, 0, 0]])


def test_dhs_key_features_subtract_the_hub_term():
    """The rerank's key (ratio less the hub term), its gap to the best; no hub column: the plain ratio."""
    cands = {"query_id": np.array(["a", "a", "a", "b"]),
             "verify_score": np.array([0.5, 0.3, 0.4, 0.9]),
             "dhs_score": np.array([10.0, 12.0, 11.0, 5.0]),
             "pse_distance": np.ones(4), "dhs_matrix_mean": np.full(4, 5.0),
             "verify_std_score": np.zeros(4), "verify_dhs_score": np.zeros(4), "verify_high_score": np.zeros(4),
             "dhs_hub": np.array([0.5, 1.5, np.nan, 0.25])}
    names = ("dhs_key", "dhs_key_gap_to_best")
    X = features_for(cands, names=names)
    np.testing.assert_allclose(X[:, 0], [1.5, 0.9, 2.2, 0.75])  # ratios 2.0, 2.4, 2.2, 1.0; NaN hub: none
    np.testing.assert_allclose(X[:, 1], [0.6, 0.0, 1.3, 0.0])
    del cands["dhs_hub"]
    np.testing.assert_allclose(features_for(cands, names=names)[:, 0], [2.0, 2.4, 2.2, 1.0])


def test_robust_z_and_named_features():
    cands = {"query_id": np.array(["a"] * 5 + ["b"]),
             "verify_score": np.array([0.2, 0.8, 0.9, 1.0, 0.7, 0.5]),
             "dhs_score": np.full(6, 10.0), "pse_distance": np.ones(6), "dhs_matrix_mean": np.full(6, 5.0),
             "verify_std_score": np.zeros(6), "verify_dhs_score": np.zeros(6), "verify_high_score": np.zeros(6)}
    X = features_for(cands, names=("verify_robust_z", "verify_score"))
    # query a: median 0.8, MAD median(|0.6, 0, 0.1, 0.2, 0.1|) = 0.1
    np.testing.assert_allclose(X[:5, 0], (np.array([0.2, 0.8, 0.9, 1.0, 0.7]) - 0.8) / (0.14826 + 0.01))
    assert X[5, 0] == 0.0  # one candidate: nothing to stand out of
    np.testing.assert_array_equal(X[:, 1], cands["verify_score"])
    with pytest.raises(ParameterError, match="unknown fusion features"):
        features_for(cands, names=("verify_score", "bogus"))


def test_threshold_travels_with_the_model(rng, tmp_path):
    cands, y = make_candidates(rng, 100)
    model = fit_fusion(features_for(cands), y)
    assert model.threshold == DEFAULT_THRESHOLD and model.false_accept_rate is None
    tuned = FusionModel(**{**model.__dict__, "threshold": 0.83, "false_accept_rate": 0.02,
                           "true_accept_rate": 0.97})
    tuned.save(str(tmp_path / "f.json"))
    d = json.loads((tmp_path / "f.json").read_text())
    assert (d["threshold"], d["false_accept_rate"], d["true_accept_rate"]) == (0.83, 0.02, 0.97)
    assert read_threshold(str(tmp_path / "f.json")) == 0.83
    assert FusionModel.load(str(tmp_path / "f.json")) == tuned
    (tmp_path / "bad.json").write_text(json.dumps({**d, "threshold": "high"}))
    with pytest.raises(ModelError, match="expected a number in"):
        read_threshold(str(tmp_path / "bad.json"))


def test_features_are_clipped_to_the_fitted_range_and_the_veto_zeroes(rng, tmp_path):
    cands, y = make_candidates(rng, 300)
    X = features_for(cands)
    model = fit_fusion(X, y)
    np.testing.assert_array_equal(model.lower, X.min(axis=0))
    np.testing.assert_array_equal(model.upper, X.max(axis=0))
    # a row far outside the fitted range scores as the row clipped to it, not extrapolated
    far = X[:1] + 50.0 * (np.asarray(model.upper) - np.asarray(model.lower))
    np.testing.assert_allclose(predict_proba(model, far), predict_proba(model, np.asarray(model.upper)[None]))
    unclipped = FusionModel(**{**model.__dict__, "lower": None, "upper": None})
    np.testing.assert_allclose(predict_proba(unclipped, X), predict_proba(model, X))  # inside: the same
    vetoed = FusionModel(**{**model.__dict__, "verify_veto": 0.8})
    v = X[:, FEATURE_NAMES.index("verify_score")]
    p, pv = predict_proba(model, X), predict_proba(vetoed, X)
    assert (v >= 0.8).any() and (v < 0.8).any()
    np.testing.assert_array_equal(pv[v >= 0.8], 0.0)
    np.testing.assert_array_equal(pv[v < 0.8], p[v < 0.8])
    vetoed.save(str(tmp_path / "f.json"))
    assert FusionModel.load(str(tmp_path / "f.json")) == vetoed
    d = vetoed.to_dict()
    with pytest.raises(ModelError, match="lower and upper must both be given"):
        FusionModel.from_dict({**d, "upper": None})
    with pytest.raises(ModelError, match="one value per feature"):
        FusionModel.from_dict({**d, "lower": d["lower"][:3], "upper": d["upper"][:3]})
    # a format-5 file (no range, no veto) still loads and does not clip
    old = FusionModel.from_dict({k: v for k, v in {**d, "format_version": 5}.items()
                                 if k not in ("lower", "upper", "verify_veto")})
    assert old.lower is None and old.verify_veto is None


def test_dhs_ratio():
    r = dhs_ratio(np.array([8.0, np.inf, 4.0, 3.0]), np.array([16.0, 16.0, np.nan, 0.0]))
    np.testing.assert_array_equal(r, [0.5, np.inf, np.inf, 3000.0])


def test_reliability_curve_and_ece_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    y = np.array([0, 0, 1, 0, 1])
    mid, frac, count = reliability_curve(p, y, n_bins=10)
    np.testing.assert_allclose(mid, np.arange(10) / 10 + 0.05)
    np.testing.assert_array_equal(count, [2, 0, 0, 0, 0, 1, 0, 0, 0, 2])
    assert frac[0] == 0 and frac[5] == 1 and frac[9] == 0.5 and np.isnan(frac[1])
    # |0 - 0.1| + |1 - 0.55| + |1 - 1.9| over 5
    assert expected_calibration_error(p, y) == pytest.approx((0.1 + 0.45 + 0.9) / 5)
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0


def test_errors():
    with pytest.raises(ParameterError, match="single class"):
        fit_fusion(np.zeros((3, len(FEATURE_NAMES))), np.zeros(3))
    with pytest.raises(ParameterError, match="did you pass raw scores"):
        expected_calibration_error(np.array([3.0]), np.array([1]))
    with pytest.raises(ParameterError, match="lack the column 'dhs_score'"):
        features_for({"verify_score": np.zeros(2), "verify_std_score": np.zeros(2), "verify_dhs_score": np.zeros(2),
                      "verify_high_score": np.zeros(2), "pse_distance": np.zeros(2)})
