"""Calibrated fusion of the cascade's scores into one match probability.

Conventions
-----------
* A candidate carries six scores, all "lower is better": ``verify_score``
  (the thesis's cosine-DTW score s), ``verify_std_score`` (the same on
  features standardised per bin, which ignores a recording's static
  equalisation), ``verify_dhs_score`` (the same on the DHS nets' real-valued
  outputs), ``verify_high_score`` (as ``verify_std_score`` on the top
  octave of bins only), ``dhs_score`` (Hamming-DTW cost / path length) and
  ``pse_distance`` (Euclidean embedding distance); and ``dhs_matrix_mean``,
  the mean of the Hamming distance matrix, which turns the DHS score into
  the ratio :func:`dhs_ratio`.
* Features (:func:`features_for`), computed per query from its own candidate
  list only, so that they are available at match time:

  =====  ==========================================================
  0      ``verify_score``
  1      ``log(dhs_ratio + eps)``
  2      ``log(pse_distance + eps)``
  3      ``verify_score - min(verify_score of the query)`` (gap to best)
  4      ``dhs_ratio - min(dhs_ratio of the query)``
  5      ``log(pse) - min(log(pse) of the query)``
  6      ``verify_score - second smallest verify_score`` (margin; for the best
         candidate it is negative, for the others it is the gap to the best)
  7      ``1`` if ``verify_score`` was missing, else ``0``
  8-10   ``verify_std_score``, its gap to the best and its margin, as 0, 3, 6
  11-13  ``verify_dhs_score``, its gap to the best and its margin
  14-16  ``verify_high_score``, its gap to the best and its margin
  17-19  ``dhs_key``: ``dhs_ratio`` less the preview's hub term (the
         ``dhs_hub`` column, :func:`msdmatch.kernels.hub.corrected_ratio`),
         as is; its gap to the best and its robust z (below)
  =====  ==========================================================

  Raw verify scores live in [0, ~1.5] and are used as is; DHS ratios and PSE
  distances are positive with long right tails, so they enter as logs.  The
  relative features say how much better a candidate is than its competitors,
  which is what separates a true match from the best of many wrong ones.
  Missing scores (a candidate not verified, NaN) are replaced by the query's
  worst observed value of that score, or 0 if none is observed.
* The model is logistic regression on standardised features, fitted by
  Newton's method (IRLS) with an L2 penalty on the weights (not the bias).
  Probabilities are ``sigmoid(w · (x - mean) / scale + b)``, with each
  feature first clipped to the range it had in the fit (``lower``,
  ``upper``): a score beyond anything calibrated must not be extrapolated
  along a weight fitted on collinear features.
* A model may carry a ``verify_veto``: a candidate whose ``verify_score``
  reaches it gets confidence 0, whatever its relative features say.  For
  synthesized queries it is 1.0, the thesis's ``c = 0`` (cosine distance 1:
  the aligned frames are no more alike than orthogonal ones), which no true
  match in the calibration and dev sets reached; piano-roll queries compare
  a piano roll with a CQT, where true matches score 0.95-1.0, so they have
  none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from msdmatch.errors import ModelError, ParameterError

__all__ = [
    "ALL_FEATURES",
    "DEFAULT_THRESHOLD",
    "FEATURE_NAMES",
    "read_threshold",
    "FusionModel",
    "dhs_ratio",
    "features_for",
    "fit_fusion",
    "predict_proba",
    "single_scores",
    "top1_by_query",
    "expected_calibration_error",
    "reliability_curve",
]

#: 2: adds the bin-standardised verify score; DHS enters as a ratio to the matrix mean.
#: 3: adds the verify score on the DHS nets' real-valued outputs.
#: 4: adds the verify score on the top octave of bins.
#: 5: fitted on open-set validation queries; records ``threshold`` with its measured
#:    ``false_accept_rate`` and ``true_accept_rate``.
#: 6: records the features' fitted range (``lower``, ``upper``; features are clipped to it)
#:    and an optional ``verify_veto``.
#: 7: adds the rerank's hub-corrected DHS ratio (``dhs_key``, its gap to the best, its robust z).
FORMAT_VERSION = 7
#: Files of older versions load when they carry this version's features (a format-5 file
#: without the fitted range or veto does not clip); files without them are refused with how to refit.
_OLDEST_READABLE = 4
#: Threshold on a query's top-1 confidence when a model records none.
DEFAULT_THRESHOLD = 0.5

_BASE_FEATURES = (
    "verify_score",
    "log_dhs_ratio",
    "log_pse_distance",
    "verify_gap_to_best",
    "dhs_ratio_gap_to_best",
    "log_pse_gap_to_best",
    "verify_margin_to_second",
    "verify_missing",
    "verify_std_score",
    "verify_std_gap_to_best",
    "verify_std_margin_to_second",
    "verify_dhs_score",
    "verify_dhs_gap_to_best",
    "verify_dhs_margin_to_second",
    "verify_high_score",
    "verify_high_gap_to_best",
    "verify_high_margin_to_second",
)

#: Every feature :func:`features_for` can build; a model uses a subset (``names``).
#: ``*_robust_z``: ``(x - median) / (1.4826 MAD + 0.01)`` over the query's
#: candidates: how far a candidate stands out of the scores of the query's
#: other (mostly unrelated) candidates, in units of their spread.
#: ``dhs_key*``: the rerank's order key, the DHS ratio less the preview's hub
#: term (:func:`msdmatch.kernels.hub.corrected_ratio`; the ``dhs_hub`` column,
#: 0 when absent), as is (it may be negative), its gap to the best and its robust z.
ALL_FEATURES = _BASE_FEATURES + (
    "verify_robust_z",
    "verify_std_robust_z",
    "verify_dhs_robust_z",
    "verify_high_robust_z",
    "dhs_ratio_robust_z",
    "log_pse_robust_z",
    "dhs_key",
    "dhs_key_gap_to_best",
    "dhs_key_robust_z",
)


#: The features of this version's fusion model (chosen by cross-validation on open-set
#: validation runs; see docs/experiments.md).
FEATURE_NAMES = _BASE_FEATURES + ("dhs_key", "dhs_key_gap_to_best", "dhs_key_robust_z")


_EPS = 1e-6


@dataclass(frozen=True)
class FusionModel:
    """A fitted logistic fusion model.

    Attributes
    ----------
    weights : tuple of float [len = n_features]
    bias : float
    mean, scale : tuple of float [len = n_features]
        Standardisation applied before the weights.
    feature_names : tuple of str
    l2 : float
        Penalty used in the fit.
    metrics : dict
        Validation metrics recorded at fit time (free form, JSON-able).
    threshold : float
        A query's top row is ``matched`` when its confidence is at least this.
    false_accept_rate, true_accept_rate : float or None
        Measured at ``threshold`` on open-set validation queries (each query
        scored by a model fitted on the other folds): the share of queries
        with no match in the database whose top-1 is accepted, and the share
        of queries with a correct top-1 that is accepted.
    lower, upper : tuple of float [len = n_features] or None
        Each feature's range in the fit; features are clipped to it before
        the weights (None: no clipping, models of format version 5).
    verify_veto : float or None
        Confidence is 0 where ``verify_score`` is at least this.
    """

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    l2: float = 1.0
    metrics: dict = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    false_accept_rate: float | None = None
    true_accept_rate: float | None = None
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    verify_veto: float | None = None

    def to_dict(self) -> dict:
        """JSON-able dict, with the format version."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": "logistic",
            "feature_names": list(self.feature_names),
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "mean": [float(m) for m in self.mean],
            "scale": [float(s) for s in self.scale],
            "l2": float(self.l2),
            "threshold": float(self.threshold),
            "false_accept_rate": _opt_float(self.false_accept_rate),
            "true_accept_rate": _opt_float(self.true_accept_rate),
            "lower": _opt_floats(self.lower),
            "upper": _opt_floats(self.upper),
            "verify_veto": _opt_float(self.verify_veto),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> FusionModel:
        """Inverse of :meth:`to_dict`; refuses other format versions or features."""
        version = d.get("format_version")
        refit = ("refit it with `scripts/fit_fusion_openset.sh` (or `msdmatch calibrate` on open-set "
                 "validation MATCHES), or pass `--fusion none`")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelError(
                f"fusion model has format_version {version!r}, this msdmatch reads {FORMAT_VERSION}; it was "
                "written by a newer msdmatch: upgrade msdmatch or refit it with `scripts/fit_fusion_openset.sh`"
            )
        names = tuple(d.get("feature_names", ()))
        if version < _OLDEST_READABLE or names != FEATURE_NAMES:
            raise ModelError(
                f"fusion model has format_version {version} and features {list(names)}; this msdmatch "
                f"reads format_version {FORMAT_VERSION} with features {list(FEATURE_NAMES)}: {refit}"
            )
        try:
            m = cls(
                weights=tuple(float(w) for w in d["weights"]),
                bias=float(d["bias"]),
                mean=tuple(float(x) for x in d["mean"]),
                scale=tuple(float(x) for x in d["scale"]),
                feature_names=names,
                l2=float(d.get("l2", 1.0)),
                metrics=dict(d.get("metrics", {})),
                threshold=float(d.get("threshold", DEFAULT_THRESHOLD)),
                false_accept_rate=_opt_float(d.get("false_accept_rate")),
                true_accept_rate=_opt_float(d.get("true_accept_rate")),
                lower=_opt_floats(d.get("lower")),
                upper=_opt_floats(d.get("upper")),
                verify_veto=_opt_float(d.get("verify_veto")),
            )
        except KeyError as e:
            raise ModelError(f"fusion model dict lacks the key {e.args[0]!r}") from None
        if not (len(m.weights) == len(m.mean) == len(m.scale) == len(names)):
            raise ModelError("fusion model weights, mean and scale must have one value per feature")
        bounds = [b for b in (m.lower, m.upper) if b is not None]
        if len(bounds) == 1 or any(len(b) != len(names) for b in bounds):
            raise ModelError("fusion model lower and upper must both be given, with one value per feature")
        if not 0.0 <= m.threshold <= 1.0:
            raise ModelError(f"fusion model threshold {m.threshold!r} is not a probability in [0, 1]")
        return m

    def save(self, path: str) -> None:
        """Write the model as JSON (e.g. the shipped ``fusion.json``)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    @classmethod
    def load(cls, path: str) -> FusionModel:
        """Read a model written by :meth:`save`."""
        try:
            with open(path) as fh:
                d = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"cannot read fusion model {path}: {e}") from None
        return cls.from_dict(d)


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def _opt_floats(x) -> tuple[float, ...] | None:
    return None if x is None else tuple(float(v) for v in x)


def read_threshold(path: str) -> float:
    """The ``threshold`` a fusion JSON ships (:data:`DEFAULT_THRESHOLD` if it has none).

    Parameters
    ----------
    path : str
        A fusion model written by :meth:`FusionModel.save`.

    Returns
    -------
    threshold : float in [0, 1]
    """
    try:
        with open(path) as fh:
            t = json.load(fh).get("threshold", DEFAULT_THRESHOLD)
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ModelError(f"cannot read the threshold of fusion model {path}: {e}") from None
    if not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
        raise ModelError(f"fusion model {path} has threshold {t!r}; expected a number in [0, 1]")
    return float(t)


def _column(candidates: Mapping, name: str, n: int | None) -> np.ndarray:
    if name not in candidates:
        raise ParameterError(
            f"candidates lack the column {name!r}; have {sorted(candidates)}; "
            "expected verify_score, verify_std_score, verify_dhs_score, verify_high_score, dhs_score, "
            "pse_distance, dhs_matrix_mean (written by this version of `msdmatch match`)"
        )
    col = np.asarray(candidates[name], dtype=np.float64).ravel()
    if n is not None and col.shape[0] != n:
        raise ParameterError(f"column {name!r} has {col.shape[0]} rows, expected {n}")
    return col


def _fill_missing(x: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Replace NaN with the group's worst (largest) observed value, or 0."""
    worst = np.full(n_groups, -np.inf)
    ok = np.isfinite(x)
    np.maximum.at(worst, inv[ok], x[ok])
    worst[~np.isfinite(worst)] = 0.0
    return np.where(ok, x, worst[inv])


def _group_min(x: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    m = np.full(n_groups, np.inf)
    np.minimum.at(m, inv, x)
    return m[inv]


def features_for(candidates: Mapping, *, groups: np.ndarray | None = None,
                 names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """Feature matrix for candidates, computed per query.

    Parameters
    ----------
    candidates : mapping of str to np.ndarray [shape=(n,)]
        Columns ``verify_score``, ``verify_std_score``, ``verify_dhs_score``,
        ``verify_high_score``, ``dhs_score``, ``pse_distance``,
        ``dhs_matrix_mean`` (NaN where a stage did not score a candidate),
        optionally ``dhs_hub`` and, unless ``groups`` is given, ``query_id``.
    groups : np.ndarray [shape=(n,)] or None
        Query of each candidate; defaults to ``candidates["query_id"]``, or
        one query for all rows if there is no such column.
    names : tuple of str
        Features to build, from :data:`ALL_FEATURES` (default: the
        :data:`FEATURE_NAMES` of this version's fusion model).

    Returns
    -------
    X : np.ndarray [shape=(n, len(names)), dtype=float64]
        Columns as in ``names``.
    """
    unknown = [f for f in names if f not in ALL_FEATURES]
    if unknown:
        raise ParameterError(f"unknown fusion features {unknown}; known: {list(ALL_FEATURES)}")
    v = _column(candidates, "verify_score", None)
    n = v.shape[0]
    raw = {"verify": v}
    for k in ("verify_std", "verify_dhs", "verify_high"):
        raw[k] = _column(candidates, f"{k}_score", n)
    h = dhs_ratio(_column(candidates, "dhs_score", n), _column(candidates, "dhs_matrix_mean", n))
    p = _column(candidates, "pse_distance", n)
    if groups is None:
        groups = candidates.get("query_id", np.zeros(n, np.int64))
    groups = np.asarray(groups).ravel()
    if groups.shape[0] != n:
        raise ParameterError(f"groups has {groups.shape[0]} rows but candidates have {n}")
    if n == 0:
        return np.zeros((0, len(names)))
    _, inv = np.unique(groups, return_inverse=True)
    ng = int(inv.max()) + 1
    cols = {"verify_missing": (~np.isfinite(v)).astype(np.float64)}
    for k, x in raw.items():
        x = _fill_missing(x, inv, ng)
        cols["verify_score" if k == "verify" else f"{k}_score"] = x
        cols[f"{k}_gap_to_best"] = x - _group_min(x, inv, ng)
        cols[f"{k}_margin_to_second"] = _margin(x, inv, ng)
        cols[f"{k}_robust_z"] = _robust_z(x, inv, ng)
    h = _fill_missing(h, inv, ng)
    lp = np.log(np.maximum(_fill_missing(p, inv, ng), 0.0) + _EPS)
    cols["log_dhs_ratio"] = np.log(np.maximum(h, 0.0) + _EPS)
    cols["dhs_ratio_gap_to_best"] = h - _group_min(h, inv, ng)
    cols["dhs_ratio_robust_z"] = _robust_z(h, inv, ng)
    if any(f.startswith("dhs_key") for f in names):
        from msdmatch.kernels.hub import corrected_ratio

        hub = _column(candidates, "dhs_hub", n) if "dhs_hub" in candidates else np.zeros(n)
        key = corrected_ratio(h, hub)
        cols["dhs_key"] = key
        cols["dhs_key_gap_to_best"] = key - _group_min(key, inv, ng)
        cols["dhs_key_robust_z"] = _robust_z(key, inv, ng)
    cols["log_pse_distance"] = lp
    cols["log_pse_gap_to_best"] = lp - _group_min(lp, inv, ng)
    cols["log_pse_robust_z"] = _robust_z(lp, inv, ng)
    return np.column_stack([cols[f] for f in names])


def _robust_z(x: np.ndarray, inv: np.ndarray, ng: int) -> np.ndarray:
    """``(x - median) / (1.4826 MAD + 0.01)`` within each group; inf values count as large."""
    x = np.where(np.isfinite(x), x, np.nan)
    med, mad = np.zeros(ng), np.zeros(ng)
    order = np.argsort(inv, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=ng))]
    for g in range(ng):
        xs = x[order[bounds[g]:bounds[g + 1]]]
        xs = xs[np.isfinite(xs)]
        if xs.size:
            med[g] = np.median(xs)
            mad[g] = np.median(np.abs(xs - med[g]))
    z = (x - med[inv]) / (1.4826 * mad[inv] + 0.01)
    return np.nan_to_num(z, nan=0.0)


def _margin(v: np.ndarray, inv: np.ndarray, ng: int) -> np.ndarray:
    """Best of its query: ``v - second best`` (<= 0); others: ``v - best`` (>= 0)."""
    order = np.lexsort((v, inv))
    g_sorted = inv[order]
    first = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    sec_mask = np.r_[False, first[:-1]] & ~first
    second = np.full(ng, np.nan)
    second[g_sorted[sec_mask]] = v[order][sec_mask]
    sec = second[inv]
    sec = np.where(np.isnan(sec), v, sec)  # a query with one candidate: margin 0
    best = _group_min(v, inv, ng)
    return np.where(v <= best, v - sec, v - best)


def dhs_ratio(score: np.ndarray, matrix_mean: np.ndarray) -> np.ndarray:
    """DHS score over the mean of its Hamming distance matrix (lower is better).

    Parameters
    ----------
    score, matrix_mean : np.ndarray [shape=(...)]
        ``dhs_score`` and ``dhs_matrix_mean`` columns.

    Returns
    -------
    ratio : np.ndarray [shape=(...), dtype=float64]
        ``score / max(matrix_mean, 1e-3)``; ``inf`` where the score is ``inf``
        or the mean is NaN (a candidate that was not reranked).
    """
    s = np.asarray(score, dtype=np.float64)
    m = np.asarray(matrix_mean, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(s) & np.isfinite(m), s / np.maximum(m, 1e-3), np.inf)


def single_scores(candidates: Mapping) -> dict[str, np.ndarray]:
    """Each score a candidate can be ranked by alone (lower is better).

    Parameters
    ----------
    candidates : mapping of str to np.ndarray [shape=(n,)]
        MATCHES columns; ``verify_std_score``, ``verify_dhs_score``,
        ``verify_high_score``, ``screen_score``, ``dhs_matrix_mean`` and ``dhs_hub`` may be absent.

    Returns
    -------
    scores : dict of str to np.ndarray [shape=(n,)]
        ``verify_score``, ``dhs_score``, ``pse_distance``, then
        ``verify_std_score``, ``verify_dhs_score``, ``verify_high_score``,
        ``screen_score`` and ``dhs_ratio`` when their columns are there.
    """
    names = ("verify_score", "dhs_score", "pse_distance", "verify_std_score", "verify_dhs_score",
             "verify_high_score", "screen_score")
    scores = {c: np.asarray(candidates[c], dtype=np.float64) for c in names if c in candidates}
    if "dhs_matrix_mean" in candidates:
        scores["dhs_ratio"] = dhs_ratio(candidates["dhs_score"], candidates["dhs_matrix_mean"])
        if "dhs_hub" in candidates:  # the rerank's order key
            from msdmatch.kernels.hub import corrected_ratio

            scores["dhs_ratio_corrected"] = corrected_ratio(scores["dhs_ratio"], candidates["dhs_hub"])
    return scores


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_fusion(
    X: np.ndarray,
    y: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    l2: float = 1.0,
    names: tuple[str, ...] = FEATURE_NAMES,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> FusionModel:
    """Fit the logistic fusion model by penalised Newton iterations (IRLS).

    Parameters
    ----------
    X : np.ndarray [shape=(n, d)]
        Features from :func:`features_for`.
    y : np.ndarray [shape=(n,)]
        1 for a query's true match, 0 otherwise.
    groups : np.ndarray [shape=(n,)] or None
        Query of each row; used to record the fitted model's top-1 accuracy
        in ``metrics``.
    l2 : float >= 0
        Penalty ``l2/2 ‖w‖²`` on the standardised weights (the bias is free).
    names : tuple of str
        The features of ``X``'s columns (as passed to :func:`features_for`).
    max_iter : int > 0
    tol : float > 0
        Stop when the Newton decrement falls below ``tol``.

    Returns
    -------
    model : FusionModel
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ParameterError(
            f"X must have shape (n, {len(names)}) as built by features_for, got {X.shape}"
        )
    if y.shape[0] != X.shape[0]:
        raise ParameterError(f"y has {y.shape[0]} labels but X has {X.shape[0]} rows")
    if not np.isin(y, (0, 1)).all():
        raise ParameterError("y must hold 0 (wrong candidate) and 1 (true match) only")
    if y.min(initial=1) == y.max(initial=0):
        raise ParameterError(
            "y holds a single class; fitting needs both true matches and wrong candidates"
        )
    if not np.isfinite(X).all():
        raise ParameterError("X contains NaN or infinite values; build it with features_for")
    if not l2 >= 0:
        raise ParameterError(f"l2 must be >= 0, got {l2!r}")
    y = y.astype(np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    Z = np.column_stack([(X - mean) / scale, np.ones(X.shape[0])])
    d = Z.shape[1]
    pen = np.full(d, float(l2))
    pen[-1] = 0.0
    beta = np.zeros(d)
    beta[-1] = np.log(y.mean() / (1 - y.mean()))
    def loss(b: np.ndarray) -> float:  # penalised negative log-likelihood
        z = Z @ b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * b * b))

    f = loss(beta)
    for _ in range(max_iter):
        p = _sigmoid(Z @ beta)
        grad = Z.T @ (p - y) + pen * beta
        w = np.maximum(p * (1 - p), 1e-12)
        H = (Z * w[:, None]).T @ Z + np.diag(pen) + 1e-9 * np.eye(d)
        step = np.linalg.solve(H, grad)
        # damped Newton: halve the step until the loss does not rise (nearly separable
        # classes make the full step overshoot)
        t = 1.0
        while t > 1e-6 and loss(beta - t * step) > f + 1e-12:
            t *= 0.5
        beta -= t * step
        f = loss(beta)
        if float(grad @ step) < tol:
            break
    model = FusionModel(
        weights=tuple(beta[:-1].tolist()), bias=float(beta[-1]),
        mean=tuple(mean.tolist()), scale=tuple(scale.tolist()), l2=float(l2), feature_names=tuple(names),
        lower=tuple(X.min(axis=0).tolist()), upper=tuple(X.max(axis=0).tolist()),
    )
    prob = predict_proba(model, X)
    metrics = {"n": int(X.shape[0]), "n_pos": int(y.sum()),
               "log_loss": float(-np.mean(y * np.log(prob + 1e-15) + (1 - y) * np.log(1 - prob + 1e-15))),
               "ece": expected_calibration_error(prob, y)}
    if groups is not None:
        metrics["top1"] = top1_by_query(-prob, y, np.asarray(groups))
    return FusionModel(**{**model.__dict__, "metrics": metrics})


def top1_by_query(score: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of groups (queries) whose lowest-score row is a positive (ties: first row).

    Parameters
    ----------
    score : np.ndarray [shape=(n,)]
        Lower is better.
    y : np.ndarray [shape=(n,)]
        1 for a query's true match, 0 otherwise.
    groups : np.ndarray [shape=(n,)]
        Query of each row.

    Returns
    -------
    top1 : float
    """
    _, inv = np.unique(groups, return_inverse=True)
    order = np.lexsort((score, inv))
    first = np.r_[True, inv[order][1:] != inv[order][:-1]]
    return float(np.mean(y[order][first] > 0))


def predict_proba(model: FusionModel, feats: np.ndarray) -> np.ndarray:
    """Calibrated probability that each candidate is its query's true match.

    Parameters
    ----------
    model : FusionModel
    feats : np.ndarray [shape=(n, d)]
        From :func:`features_for`.

    Returns
    -------
    p : np.ndarray [shape=(n,), dtype=float64]
    """
    X = np.asarray(feats, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(model.weights):
        raise ParameterError(
            f"feats must have shape (n, {len(model.weights)}), got {X.shape}; build it with features_for"
        )
    Xc = X if model.lower is None else np.clip(X, model.lower, model.upper)
    z = ((Xc - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(model.weights)
    p = _sigmoid(z + model.bias)
    if model.verify_veto is not None:
        p[X[:, model.feature_names.index("verify_score")] >= model.verify_veto] = 0.0
    return p


def _check_prob(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ParameterError(f"p has {p.size} values but y has {y.size}")
    if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1 or np.isnan(p).any()):
        raise ParameterError("p must hold probabilities in [0, 1]; did you pass raw scores?")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ParameterError(f"n_bins must be a positive integer, got {n_bins!r}")
    return p, y


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin ``floor(p * n_bins)``, with p = 1 in the last bin."""
    return np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_curve(
    p: np.ndarray, y: np.ndarray, *, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed frequency of positives per bin of predicted probability.

    Bins are ``n_bins`` equal-width intervals ``[b/n_bins, (b+1)/n_bins)`` of
    [0, 1], found as ``floor(p n_bins)``; the last is closed.

    Returns
    -------
    bin_mid : np.ndarray [shape=(n_bins,)]
    frac_pos : np.ndarray [shape=(n_bins,)]
        NaN for empty bins.
    count : np.ndarray [shape=(n_bins,), dtype=int64]
    """
    p, y = _check_prob(p, y, n_bins)
    b = _bin_of(p, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.int64)
    pos = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(count > 0, pos / np.maximum(count, 1), np.nan)
    return (np.arange(n_bins) + 0.5) / n_bins, frac, count


def expected_calibration_error(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10) -> float:
    """Expected calibration error: ``Σ_b (n_b / n) |mean(y_b) − mean(p_b)|``.

    Returns NaN for empty input.
    """
    p, y = _check_prob(p, y, n_bins)
    if p.size == 0:
        return float("nan")
    b = _bin_of(p, n_bins)
    sp = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    return float(np.sum(np.abs(sy - sp)) / p.size)
