"""Verify: full cosine DTW of a query against its screened candidates.

Conventions
-----------
- Verify runs cosine DTW four times (:func:`verify_scores`): on the
  features as stored (the thesis's ``verify_score``), on features
  standardised per bin over each sequence (``verify_std_score``,
  :func:`msdmatch.kernels.features.standardize_bins`), which takes out a
  recording's static equalisation, on the same for the top octave of bins
  only (``verify_high_score``, from :data:`HIGH_BIN`: where melodies sit,
  above a bass part or a high-pass that a recording and its transcription
  may disagree on), and on the DHS nets' real-valued outputs before their
  sign is taken (``verify_dhs_score``): the learned frame features the hash
  bits come from, without the loss of binarising them.  The fusion uses all
  four.
- Scores are lower-is-better; ``inf`` where a sequence is empty.
- :func:`query_span` gives the seconds of the query that a candidate's
  alignment covers, from the path of the cosine DTW on the bin-standardised
  features.
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.params import COSINE_GULLY

#: Gully of the verify DTWs (as the screen DTW).
VERIFY_GULLY = COSINE_GULLY
#: First bin of ``verify_high_score``: 36 bins above MIDI note 36, i.e. C5 (523 Hz) and up.
HIGH_BIN = 36
#: The verify scores, in the order of :func:`verify_scores`' columns.
VERIFY_COLUMNS = ("verify_score", "verify_std_score", "verify_dhs_score", "verify_high_score")


def verify_scores(X: np.ndarray, Ys: list[np.ndarray], *, nets: dict, threads: int = 1) -> np.ndarray:
    """The four verify DTW scores of one query against its candidates.

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_bins)]
        The query's features.
    Ys : list of np.ndarray [shape=(n_frames_i, n_bins)]
        The candidates' features.
    nets : dict
        The DHS nets, ``{'query': onnx path, 'db': onnx path, 'downsample':
        int}``, from :func:`dhs_nets`.
    threads : int
        onnxruntime threads.

    Returns
    -------
    scores : np.ndarray [shape=(len(Ys), 4), dtype=float64]
        Raffel's normalised cosine-DTW score (lower is better) on the features
        as stored (column 0), on them standardised per bin (column 1), on
        the DHS nets' real-valued outputs (column 2) and on bins
        ``HIGH_BIN:`` standardised per bin (column 3), as
        :data:`VERIFY_COLUMNS`; ``inf`` where a sequence is empty.
    """
    from msdmatch.kernels.dtw import cosine_dtw, cosine_dtw_pair
    from msdmatch.kernels.features import unit_frames
    from msdmatch.stages.embed import embed_sequences

    s = np.full((len(Ys), len(VERIFY_COLUMNS)), np.inf)
    ok = [n for n, Y in enumerate(Ys) if len(Y)]
    if not len(X) or not ok:
        return s
    ds = nets["downsample"]
    (Xh,) = embed_sequences([X], nets["query"], downsample=ds, threads=threads)
    Yh = embed_sequences([Ys[n] for n in ok], nets["db"], downsample=ds, threads=threads)
    (Xs, Xt), Xh = standardized_views(X), unit_frames(Xh)
    for n, yh in zip(ok, Yh, strict=True):
        Ys_, Yt = standardized_views(Ys[n])
        s[n, :2] = cosine_dtw_pair(X, Ys[n], Xs, Ys_, gully=VERIFY_GULLY)
        s[n, 2] = cosine_dtw(Xh, unit_frames(yh), gully=VERIFY_GULLY, return_path=False)
        s[n, 3] = cosine_dtw(Xt, Yt, gully=VERIFY_GULLY, return_path=False)
    return s


def standardized_views(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bin-standardised frames of verify: all bins, and bins ``HIGH_BIN:`` alone.

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_bins)]

    Returns
    -------
    all_bins : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        :func:`msdmatch.kernels.features.standardize_bins` of ``X``.
    high : np.ndarray [shape=(n_frames, n_bins - HIGH_BIN), dtype=float32]
        The same of ``X[:, HIGH_BIN:]``: each bin is standardised on its own,
        so only the frames' normalisation differs.
    """
    from msdmatch.kernels.features import standardize_bins, unit_frames

    Z = standardize_bins(X, normalize=False)
    return unit_frames(Z), unit_frames(Z[:, HIGH_BIN:])


def query_span(X: np.ndarray, Y: np.ndarray, *, frame_seconds: float) -> tuple[float, float]:
    """Seconds of the query ``X`` that its alignment to the candidate ``Y`` covers.

    The first and last query frames of the path of the cosine DTW
    (:data:`VERIFY_GULLY`, median penalty) on both sequences' frames
    standardised per bin (:func:`msdmatch.kernels.features.standardize_bins`,
    the view of ``verify_std_score``), which takes out a recording's static
    equalisation.  It places both ends within 0.5 s of a demo preview's true
    span more often than the path on the features as stored; nearly all the
    remaining misses cover another verbatim repeat of the same notes, which
    no feature tells apart (docs/experiments.md, "query span").

    Parameters
    ----------
    X : np.ndarray [shape=(n, n_bins)]
        The query's features as stored (rows of the DTW).
    Y : np.ndarray [shape=(m, n_bins)]
        The candidate's features as stored.
    frame_seconds : float
        Seconds per frame.

    Returns
    -------
    start, end : float
        ``path[0, 0] * frame_seconds`` and ``(path[-1, 0] + 1) * frame_seconds``;
        NaN when a sequence is empty.
    """
    from msdmatch.kernels.dtw import cosine_dtw
    from msdmatch.kernels.features import standardize_bins

    if not len(X) or not len(Y):
        return float("nan"), float("nan")
    _, path = cosine_dtw(standardize_bins(X), standardize_bins(Y), gully=VERIFY_GULLY, return_path=True)
    return float(path[0, 0] * frame_seconds), float((path[-1, 0] + 1) * frame_seconds)


def verify_batch(jobs: list[tuple[int, list[int]]], *, q_url: str, db_url: str, nets: dict,
                 storage_options: dict | None = None) -> list[np.ndarray]:
    """:func:`verify_scores` of queries against their top candidates, read from the stores.

    Parameters
    ----------
    jobs : list of (query_row, [db_row, ...])

    Returns
    -------
    scores : list of np.ndarray [shape=(n_candidates, 4), float64]
    """
    from msdmatch.executor import worker_threads
    from msdmatch.io.store import Store

    Q = Store(q_url, storage_options=storage_options)
    D = Store(db_url, storage_options=storage_options)
    threads = worker_threads()
    return [verify_scores(Q.sequence(qi), [D.sequence(r) for r in rows], nets=nets, threads=threads)
            for qi, rows in jobs]


def verify_chunk(jobs: list[tuple[int, int, list[int]]], *, q_url: str, db_url: str, nets: dict,
                 frame_seconds: float, storage_options: dict | None = None) -> dict:
    """Verify some queries of a batch, and the span of the query that their best candidates cover.

    Parameters
    ----------
    jobs : list of (local query index, query store row, [db row, ...])
        Storage is read outside the per-query guard, so a storage error
        fails the task (and Dask retries it); a query whose computation
        raises is reported in ``failed`` instead.
    frame_seconds : float
        Seconds per feature frame, for the span.

    Returns
    -------
    result : dict
        ``scores``: local query index -> np.ndarray [shape=(n_candidates, 4)];
        ``spans``: local query index -> {candidate index: (start, end)
        seconds of the query covered by that candidate's alignment}, for the
        best candidate by each verify score (those that can rank first); ``failed``: local query
        index -> reason; ``cpu``: thread CPU-seconds of the scores;
        ``span_cpu``: those of the spans.
    """
    from msdmatch.executor import one_line, worker_threads
    from msdmatch.io.store import Store

    Q = Store(q_url, storage_options=storage_options)
    D = Store(db_url, storage_options=storage_options)
    threads = worker_threads()
    scores: dict[int, np.ndarray] = {}
    spans: dict[int, dict[int, tuple[float, float]]] = {}
    failed: dict[int, str] = {}
    cpu = span_cpu = 0.0
    for q, qi, rows in jobs:
        X, Ys = Q.sequence(qi), [D.sequence(r) for r in rows]
        t = time.thread_time()
        try:
            scores[q] = verify_scores(X, Ys, nets=nets, threads=threads)
        except Exception as e:  # noqa: BLE001 - one query's error must not fail its batch
            failed[q] = f"verify: {one_line(e)}"
            continue
        finally:
            cpu += time.thread_time() - t
        t = time.thread_time()
        # the candidates that can rank first after fusion: the best by each verify score
        best = sorted({int(np.argmin(scores[q][:, c])) for c in range(scores[q].shape[1])}) if rows else []
        spans[q] = {j: query_span(X, Ys[j], frame_seconds=frame_seconds) for j in best
                    if np.isfinite(scores[q][j]).any()}
        span_cpu += time.thread_time() - t
    return {"scores": scores, "spans": spans, "failed": failed, "cpu": cpu, "span_cpu": span_cpu}


def dhs_nets(Q, D, info) -> dict:
    """ONNX paths of the DHS model ``info`` for the query store ``Q`` and the database ``D``.

    Parameters
    ----------
    info : ModelInfo
        The DHS model (:func:`msdmatch.stages.match.job.match_models`).

    Returns
    -------
    nets : dict
        ``{'query': path, 'db': path, 'downsample': int}``.
    """
    from msdmatch.io.modelfile import check_compatible

    return {"query": str(check_compatible(info, store_params=Q.params, store_modality=Q.modality)),
            "db": str(check_compatible(info, store_params=D.params, store_modality=D.modality)),
            "downsample": int(info.downsample)}
