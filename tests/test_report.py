"""Report metrics on hand-built tables with known ranks; readers, writers and plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msdmatch.errors import MsdmatchError, ParameterError
from msdmatch.evaluation.metrics import (
    decision_metrics,
    evaluate,
    plot_distance_histograms,
    plot_rank_cdf,
    plot_reliability,
    plot_roc,
    read_matches,
    read_truth,
    write_matches,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_matches() -> dict:
    # q1: true T1 at rank 1; q2: true T5 at rank 3; q3: true T9 absent.
    rows = [
        ("q1", 1, "T1", 0.9, 0.20, 10.0, 1.0),
        ("q1", 2, "T2", 0.1, 0.50, 9.0, 2.0),
        ("q2", 1, "T3", 0.6, 0.30, 12.0, 3.0),
        ("q2", 2, "T4", 0.3, 0.40, 11.0, 0.5),
        ("q2", 3, "T5", 0.2, 0.10, 14.0, 4.0),
        ("q3", 1, "T7", 0.4, 0.60, 20.0, 5.0),
        ("qx", 1, "T8", 0.5, 0.70, 21.0, 6.0),
    ]
    cols = list(zip(*rows, strict=True))
    names = ["query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score", "pse_distance"]
    return {n: np.array(c) for n, c in zip(names, cols, strict=True)}


TRUTH = {"query_id": np.array(["q1", "q2", "q3", "q4"]), "track_id": np.array(["T1", "T5", "T9", "T1"])}


def test_exact_metrics():
    stage = {"query_id": np.array(["q1", "q2", "q3"]), "pse_rank": np.array([3.0, 40.0, np.nan]),
             "dhs_rank": np.array([1.0, 7.0, np.nan]), "screen_rank": np.array([1.0, np.nan, np.nan]),
             "final_rank": np.array([1.0, 3.0, np.nan])}
    m = evaluate(tiny_matches(), TRUTH, stage_ranks=stage)
    assert m["n_queries"] == 4
    assert m["top_1"] == 0.25 and m["top_10"] == 0.5 and m["top_10000"] == 0.5
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["ranks"] == {"q1": 1.0, "q2": 3.0, "q3": None, "q4": None}
    assert m["recall_pse"] == 0.5 and m["recall_dhs"] == 0.5 and m["recall_final"] == 0.25
    assert m["recall_screen"] == 0.25
    # verify_score ranks T5 first in q2 -> 2 of 4; dhs: q1's T1 is 2nd -> 0; pse: q1 only
    assert m["top1_by_score"] == {"verify_score": 0.5, "dhs_score": 0.0, "pse_distance": 0.25,
                                  "fusion": 0.25}
    # confidences over the 6 rows of truth queries; labels 1,0,0,0,1,0
    assert m["ece"] == pytest.approx((abs(1 - 0.9) + 0.1 + 0.6 + 0.3 + abs(1 - 0.2) + 0.4) / 6)
    assert any("q4" in w for w in m["warnings"]) and any("qx" in w for w in m["warnings"])


def test_empty_matches_count_as_misses():
    empty = {k: v[:0] for k, v in tiny_matches().items()}
    m = evaluate(empty, TRUTH)
    assert m["top_1"] == 0.0 and m["top_10000"] == 0.0 and m["mrr"] == 0.0


def test_validation_messages():
    bad = tiny_matches()
    del bad["confidence"]
    with pytest.raises(ParameterError, match="expected query_id,rank,track_id"):
        evaluate(bad, TRUTH)
    with pytest.raises(ParameterError, match="expected query_id,track_id"):
        evaluate(tiny_matches(), {"query_id": np.array(["q1"]), "track": np.array(["T1"])})


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_matches_round_trip(tmp_path, ext):
    t = tiny_matches()
    path = tmp_path / f"matches.{ext}"
    write_matches(t, path)
    back = read_matches(path)
    np.testing.assert_array_equal(back["query_id"], t["query_id"])
    np.testing.assert_array_equal(back["track_id"], t["track_id"])
    np.testing.assert_array_equal(back["rank"], t["rank"])
    for c in ("confidence", "verify_score", "dhs_score", "pse_distance"):
        np.testing.assert_array_equal(back[c], t[c].astype(float))


def test_read_truth(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_text("query_id,track_id\n001,TRA\n002,TRB\n")
    t = read_truth(p)
    np.testing.assert_array_equal(t["query_id"], ["001", "002"])  # ids stay strings
    bad = tmp_path / "bad.csv"
    bad.write_text("midi,track\na,b\n")
    with pytest.raises(MsdmatchError, match=r"bad.csv has columns \['midi', 'track'\]; expected query_id,track_id"):
        read_truth(bad)
    with pytest.raises(ParameterError, match="does not exist"):
        read_truth(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ParameterError, match="is empty"):
        read_truth(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("query_id,track_id\nq\xe9,T1\n".encode("latin-1"))
    with pytest.raises(ParameterError, match="not UTF-8"):
        read_truth(latin)
    header_only = tmp_path / "header.csv"
    header_only.write_text("query_id,track_id\n")
    with pytest.raises(ParameterError, match="no query rows"):
        read_truth(header_only)
    # open set and duplicates: an empty track_id, several rows for one query
    multi = tmp_path / "multi.csv"
    multi.write_text("query_id,track_id,split\nq1,TA,valid\nq1,TB,valid\nq2,,valid\nq3,TC,test\n")
    t = read_truth(multi, keep_split="valid")
    np.testing.assert_array_equal(t["query_id"], ["q1", "q1", "q2"])
    np.testing.assert_array_equal(t["track_id"], ["TA", "TB", ""])


def test_report_and_plots(tmp_path):
    m = evaluate(tiny_matches(), TRUTH)
    text = write_report(m, tmp_path / "out")
    assert "| rank <= 1 | 0.2500 |" in text
    assert (tmp_path / "out" / "rank_table.txt").read_text() == text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["top_10"] == 0.5
    plot_rank_cdf(m, tmp_path / "cdf.png")
    plot_distance_histograms(tiny_matches(), TRUTH, tmp_path / "hist.png")
    plot_reliability(m, tmp_path / "rel.png")
    for name in ("cdf.png", "hist.png", "rel.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000


def open_set_matches() -> tuple[dict, dict]:
    """Four queries: q1 (two valid duplicates, the second at rank 1), q2 (no match, accepted),
    q3 (no match, rejected), q4 (valid T9 at rank 2, wrong top-1).  matched flags the top rows."""
    rows = [  # query, rank, track, confidence, verify, dhs, pse, matched
        ("q1", 1, "T1b", 0.95, 0.30, 10.0, 1.0, True),
        ("q1", 2, "T1a", 0.60, 0.20, 9.0, 2.0, False),
        ("q1", 3, "T2", 0.05, 0.80, 9.5, 2.0, False),
        ("q2", 1, "T3", 0.70, 0.60, 12.0, 3.0, True),
        ("q2", 2, "T4", 0.10, 0.70, 11.0, 0.5, False),
        ("q3", 1, "T5", 0.20, 0.65, 14.0, 4.0, False),
        ("q3", 2, "T6", 0.10, 0.90, 14.0, 4.0, False),
        ("q4", 1, "T7", 0.40, 0.50, 20.0, 5.0, False),
        ("q4", 2, "T9", 0.30, 0.45, 21.0, 6.0, False),
    ]
    names = ["query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score", "pse_distance",
             "matched"]
    m = {n: np.array(c) for n, c in zip(names, zip(*rows, strict=True), strict=True)}
    truth = {"query_id": np.array(["q1", "q1", "q2", "q3", "q4"]),
             "track_id": np.array(["T1a", "T1b", "", "", "T9"])}
    return m, truth


def test_open_set_and_multi_truth():
    m, truth = open_set_matches()
    r = evaluate(m, truth, threshold=0.5)
    assert (r["n_queries"], r["n_with_match"], r["n_no_match"]) == (4, 2, 2)
    # q1 is found at rank 1 (T1b), q4 at rank 2; no-match queries are not in the rank metrics
    assert r["ranks"] == {"q1": 1.0, "q4": 2.0}
    assert r["top_1"] == 0.5 and r["top_10"] == 1.0 and r["mrr"] == pytest.approx(0.75)
    # verify_score ranks T1a first in q1 (valid too) and T9 first in q4
    assert r["top1_by_score"]["verify_score"] == 1.0
    d = r["decision"]
    # top-1s: q1 0.95 correct, q2 0.70 no match, q3 0.20 no match, q4 0.40 wrong
    assert d["threshold"] == 0.5 and d["accepted"] == 2
    assert d["false_accept_rate"] == 0.5          # q2 of q2, q3
    assert d["true_accept_rate"] == 1.0           # q1
    assert d["wrong_accept_rate"] == 0.0          # q4 rejected
    assert d["precision"] == 0.5 and d["recall"] == 0.5
    # AUC: the one correct top-1 (0.95) outranks all three others
    assert d["auc"] == 1.0
    # top-1 reliability: bins 0.2 (q3, 0), 0.4 (q4, 0), 0.7 (q2, 0), 0.9 (q1, 1)
    assert d["top1_ece"] == pytest.approx((0.2 + 0.4 + 0.7 + 0.05) / 4)
    assert sum(d["top1_reliability"]["count"]) == 4
    # the thesis: top-1 by verify score, c = clip(2(1 - s), 0, 1) >= 0.5
    t = r["thesis_decision"]
    # q1: T1a s=0.2 c=1.6->1 correct; q2: s=0.6 c=0.8 accepted; q3: s=0.65 c=0.7; q4: T9 s=0.45 c=1 correct
    assert t["false_accept_rate"] == 1.0 and t["true_accept_rate"] == 1.0 and t["recall"] == 1.0
    # without a threshold the matched column decides: q1 and q2 accepted
    r2 = evaluate(m, truth)
    assert r2["decision"]["threshold"] is None
    assert r2["decision"]["false_accept_rate"] == 0.5 and r2["decision"]["precision"] == 0.5
    assert r2["matched_decision"]["recall"] == 0.5
    # a stricter threshold rejects q2
    r3 = evaluate(m, truth, threshold=0.8)
    assert r3["decision"]["false_accept_rate"] == 0.0 and r3["decision"]["precision"] == 1.0


def test_decision_metrics_by_hand():
    conf = np.array([0.9, 0.8, 0.3, np.nan, 0.6])
    correct = np.array([True, False, True, False, False])
    no_match = np.array([False, True, False, True, False])
    d = decision_metrics(conf, correct, no_match, threshold=0.5)
    assert d["false_accept_rate"] == 0.5 and d["true_accept_rate"] == 0.5 and d["wrong_accept_rate"] == 1.0
    assert d["precision"] == pytest.approx(1 / 3) and d["recall"] == pytest.approx(1 / 3)
    # positives 0.9, 0.3 against negatives 0.8, -inf (NaN), 0.6: 3 of 3 and 1 of 3 pairs won
    assert d["auc"] == pytest.approx(4 / 6)
    assert d["roc"]["fpr"][0] == 0.0 and d["roc"]["tpr"][-1] == 1.0
    with pytest.raises(ParameterError, match="correct top-1 and no match"):
        decision_metrics(conf, correct, correct, threshold=0.5)


def test_metrics_json_is_strict_and_open_set_plots(tmp_path):
    m, truth = open_set_matches()
    no_match_only = {"query_id": np.array(["q2", "q3"]), "track_id": np.array(["", ""])}
    r = evaluate(m, no_match_only)
    assert np.isnan(r["top_1"]) and np.isnan(r["decision"]["true_accept_rate"])
    write_report(r, tmp_path / "o")
    text = (tmp_path / "o" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["top_1"] is None
    full = evaluate(m, truth)
    plot_roc(full, tmp_path / "roc.png")
    plot_reliability(full, tmp_path / "rel.png")
    for name in ("roc.png", "rel.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
