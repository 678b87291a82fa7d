"""The README's main command, end to end, on a tiny corpus; and calibration."""
import json
import subprocess
import sys

import numpy as np
import pytest

from msdmatch.errors import ParameterError
from msdmatch.stages.calibrate import fit_from_matches


@pytest.mark.slow
def test_demo_runs_the_whole_cascade(tmp_path):
    r = subprocess.run([sys.executable, "-m", "msdmatch.cli", "demo", str(tmp_path / "d"), "--songs", "12",
                        "--distractors", "12", "--brute-force", "2", "--workers", "2"],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dashboard http://" in r.stderr
    assert "| MRR |" in r.stdout and "time per query" in r.stdout
    m = json.loads((tmp_path / "d" / "report" / "metrics.json").read_text())
    assert m["n_queries"] >= 1 and 0 <= m["mrr"] <= 1
    assert (tmp_path / "d" / "report" / "rank_cdf.png").is_file()


def _matches(rng, n_queries=40, v=5):
    rows = {k: [] for k in ("query_id", "track_id", "verify_score", "verify_std_score", "verify_dhs_score",
                            "verify_high_score", "dhs_score", "dhs_matrix_mean", "pse_distance", "stage")}
    truth = {"query_id": [], "track_id": []}
    for q in range(n_queries):
        truth["query_id"].append(f"q{q}")
        truth["track_id"].append(f"t{q}_0")
        for c in range(v):
            true = c == 0
            rows["query_id"].append(f"q{q}")
            rows["track_id"].append(f"t{q}_{c}")
            rows["verify_score"].append(rng.normal(0.45 if true else 0.8, 0.08))
            rows["verify_std_score"].append(rng.normal(0.5 if true else 0.8, 0.1))
            rows["verify_dhs_score"].append(rng.normal(0.5 if true else 0.8, 0.1))
            rows["verify_high_score"].append(rng.normal(0.55 if true else 0.8, 0.1))
            rows["dhs_matrix_mean"].append(rng.uniform(14, 17))
            rows["dhs_score"].append(rng.normal(9 if true else 13, 1.5))
            rows["pse_distance"].append(rng.normal(1.0 if true else 1.6, 0.3))
            rows["stage"].append("verify")
    return {k: np.asarray(v) for k, v in rows.items()}, {k: np.asarray(v) for k, v in truth.items()}


def test_calibration_fits_and_ranks_the_true_match_first(rng):
    m, t = _matches(rng)
    model = fit_from_matches(m, t)
    assert model.metrics["top1"] >= 0.9
    # held-out estimate: every query scored by a model fitted on the other folds
    assert model.metrics["cv_folds"] == 5 and model.metrics["cv_top1"] >= 0.85
    assert model.metrics["cv_top1"] >= model.metrics["top1_pse_distance"]
    assert 0 <= model.metrics["cv_ece"] <= 1


def test_calibration_needs_both_classes(rng):
    m, t = _matches(rng)
    t["track_id"] = np.array(["nowhere"] * len(t["track_id"]))
    with pytest.raises(ParameterError, match="both true and false"):
        fit_from_matches(m, t)
