"""Fit the fusion model that turns the cascade's scores into a calibrated confidence.

Input is a MATCHES table of validation queries (``msdmatch match`` with the
models being calibrated) and their truth.  Only the verified rows (the top V
of each query, the ones that get a confidence) are used: label 1 where the
candidate is the query's true track.
"""
from __future__ import annotations

import numpy as np

from .errors import ParameterError


def fit_from_matches(matches: dict, truth: dict, *, l2: float = 1.0):
    """Fit :class:`msdmatch.fusion.FusionModel` on verified candidates.

    Parameters
    ----------
    matches : dict of np.ndarray
        A MATCHES table with ``stage`` (as written by ``msdmatch match``).
    truth : dict with ``query_id`` and ``track_id``

    Returns
    -------
    model : FusionModel
        With ``metrics`` of the fit (top-1, log-loss, ECE on the fitted rows).
    """
    from .fusion import features_for, fit_fusion

    t = dict(zip(np.asarray(truth["query_id"]).tolist(), np.asarray(truth["track_id"]).tolist()))
    sel = np.isin(matches["query_id"], list(t))
    if "stage" in matches:
        sel &= matches["stage"] == "verify"
    else:
        sel &= np.isfinite(matches["verify_score"])
    if not sel.any():
        raise ParameterError("no verified rows of truth queries in MATCHES; run `msdmatch match` "
                             "on the validation queries first")
    rows = {k: np.asarray(v)[sel] for k, v in matches.items()}
    y = np.array([t[q] == tr for q, tr in zip(rows["query_id"], rows["track_id"])], dtype=np.float64)
    if y.sum() == 0 or y.sum() == len(y):
        raise ParameterError(f"need both true and false candidates to calibrate; got {int(y.sum())} "
                             f"true of {len(y)}")
    X = features_for(rows, groups=rows["query_id"])
    return fit_fusion(X, y, groups=rows["query_id"], l2=l2)


def calibrate_files(matches_path: str, truth_path: str, *, split: str = "valid", out: str):
    """Fit on a MATCHES file and the truth rows of ``split``; write the model to ``out``.

    ``truth_path`` is a ``truth.csv`` or a ``split.csv`` (then only rows of
    ``split`` are used).
    """
    import csv

    from .report import read_matches

    with open(truth_path, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("query_id")]
    if rows and "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split]
    truth = {"query_id": np.array([r["query_id"] for r in rows]),
             "track_id": np.array([r["track_id"] for r in rows])}
    model = fit_from_matches(read_matches(matches_path), truth)
    model.save(out)
    return model
