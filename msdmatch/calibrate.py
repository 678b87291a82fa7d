"""Fit the fusion model that turns the cascade's scores into a calibrated confidence.

Input is a MATCHES table of validation queries (``msdmatch match`` with the
models being calibrated) and their truth.  Only the verified rows (the top V
of each query, the ones that get a confidence) are used: label 1 where the
candidate is the query's true track.
"""
from __future__ import annotations

import numpy as np

from .errors import ParameterError


def fit_from_matches(matches: dict, truth: dict, *, l2: float = 1.0, folds: int = 5, seed: int = 0):
    """Fit :class:`msdmatch.fusion.FusionModel` on verified candidates.

    Parameters
    ----------
    matches : dict of np.ndarray
        A MATCHES table with ``stage`` (as written by ``msdmatch match``).
    truth : dict with ``query_id`` and ``track_id``
    folds : int
        Queries are split into this many folds (by ``seed``) to estimate the
        fusion's top-1 on queries it was not fitted on; < 2 skips it.

    Returns
    -------
    model : FusionModel
        With ``metrics`` of the fit (top-1, log-loss, ECE on the fitted rows)
        and, with ``folds``, ``cv_top1``/``cv_ece`` (each query scored by a
        model fitted on the other folds) beside ``top1_<score>`` of each
        single score on the same candidates.
    """
    from .fusion import (
        expected_calibration_error,
        features_for,
        fit_fusion,
        predict_proba,
        single_scores,
        top1_by_query,
    )

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
    model = fit_fusion(X, y, groups=rows["query_id"], l2=l2)
    if folds < 2:
        return model
    q = rows["query_id"]
    uq, inv = np.unique(q, return_inverse=True)
    fold = np.random.default_rng(seed).integers(0, folds, uq.size)[inv]
    p = np.full(len(y), np.nan)
    for f in range(folds):
        tr, te = fold != f, fold == f
        if te.any() and 0 < y[tr].sum() < tr.sum():
            p[te] = predict_proba(fit_fusion(X[tr], y[tr], l2=l2), X[te])
    ok = ~np.isnan(p)
    cv = {"cv_folds": folds, "cv_top1": top1_by_query(-p[ok], y[ok], q[ok]),
          "cv_ece": expected_calibration_error(p[ok], y[ok])}
    cv.update({f"top1_{k}": top1_by_query(np.nan_to_num(v[ok], nan=np.inf), y[ok], q[ok])
               for k, v in single_scores(rows).items()})
    return type(model)(**{**model.__dict__, "metrics": {**model.metrics, **cv}})


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
