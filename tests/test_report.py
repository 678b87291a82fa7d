"""Report metrics on hand-built tables with known ranks; readers, writers and plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msdmatch.errors import MsdmatchError, ParameterError
from msdmatch.report import (
    evaluate,
    plot_distance_histograms,
    plot_rank_cdf,
    plot_reliability,
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
    with pytest.raises(ParameterError, match="more than once"):
        evaluate(tiny_matches(), {"query_id": np.array(["q1", "q1"]), "track_id": np.array(["a", "b"])})


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
    with pytest.raises(MsdmatchError, match="does not exist"):
        read_truth(tmp_path / "nope.csv")


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
