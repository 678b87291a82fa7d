"""Match stage: PSE prune -> DHS Hamming-DTW rerank -> screen -> cosine-DTW verify -> fusion.

Conventions
-----------
- Query and database stores must have been embedded (``msdmatch embed``)
  with the same PSE and DHS models (``pse/<model>``, ``dhs/<model>``).
- The database is split into contiguous shards; each shard's embeddings and
  hash words are loaded once onto a worker and kept there, so pruning and
  reranking run where the data is.  Shard top-Ks merge by tree reduction.
- The rerank orders candidates by the DHS score over the mean of the
  Hamming distance matrix (:func:`msdmatch.dtw.hamming_matrix_mean`), the
  same normalisation the verify score applies to its cost matrix: it stops
  candidates whose bits resemble everything from crowding out the match.
- The screen (:mod:`msdmatch.screen`) runs a coarse cosine DTW on the top R
  candidates' screen frames, held by the shards beside the hash words, and
  picks the V that verify sees by the sum of its z-score and the DHS ratio's.
- Verify runs cosine DTW four times (:func:`verify_scores`): on the
  features as stored (the thesis's ``verify_score``), on features
  standardised per bin over each sequence (``verify_std_score``,
  :func:`msdmatch.features.standardize_bins`), which takes out a
  recording's static equalisation, on the same for the top octave of bins
  only (``verify_high_score``, from :data:`HIGH_BIN`: where melodies sit,
  above a bass part or a high-pass that a recording and its transcription
  may disagree on), and on the DHS nets' real-valued outputs before their
  sign is taken (``verify_dhs_score``): the learned frame features the hash
  bits come from, without the loss of binarising them.  The fusion uses all
  four.
- Output: one row per (query, candidate) with ``query_id, rank, track_id,
  confidence, verify_score, dhs_score, pse_distance, dhs_matrix_mean,
  verify_std_score, verify_dhs_score, verify_high_score, screen_score, stage``;
  ``stage`` is ``verify`` for the top V (ranked by the fused confidence),
  ``rerank`` for ranks V+1..R (by the screen's combined score) and ``prune``
  beyond (by PSE distance, only with ``keep='all'``).  Unverified rows have
  NaN ``confidence``; ``screen_score`` is the screen DTW's score, NaN beyond R.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import ModelError, ParameterError

#: DESIGN.md matching constants.
DHS_PENALTY = 15
DHS_GULLY = 0.9
VERIFY_GULLY = 0.96
#: First bin of ``verify_high_score``: 36 bins above MIDI note 36, i.e. C5 (523 Hz) and up.
HIGH_BIN = 36
#: The verify scores, in the order of :func:`verify_scores`' columns.
VERIFY_COLUMNS = ("verify_score", "verify_std_score", "verify_dhs_score", "verify_high_score")


@dataclass(frozen=True)
class DbShard:
    """Database rows ``start:stop``."""

    sid: int
    start: int
    stop: int


def plan(n_db: int, *, n_shards: int) -> list[DbShard]:
    """Split ``n_db`` rows into ``n_shards`` contiguous shards of near-equal size."""
    n_shards = max(1, min(n_shards, n_db))
    cuts = np.linspace(0, n_db, n_shards + 1).round().astype(int)
    return [DbShard(i, int(a), int(b)) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


# ------------------------------------------------------------ shard functions


def load_shard(shard: DbShard, *, url: str, pse: str, dhs: str, storage_options: dict | None = None) -> dict:
    """Load one database shard's embeddings, hash sequences, bit frequencies and screen frames."""
    from .dtw import bit_frequencies
    from .store import open_group

    g = open_group(url, storage_options=storage_options)
    E = np.asarray(g[f"pse/{pse}"][shard.start : shard.stop], dtype=np.float32)
    off = np.asarray(g[f"dhs/{dhs}/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    words = np.asarray(g[f"dhs/{dhs}/words"][off[0] : off[-1]], dtype=np.uint32)
    ok = np.all(np.isfinite(E), axis=1) & (np.diff(off) > 0)
    E[~ok] = 1e6  # failed items: far from everything
    soff = np.asarray(g["screen/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    return {"shard": shard, "E": E, "norms": np.einsum("ij,ij->i", E, E), "words": words,
            "offsets": off - off[0], "ok": ok, "bits": bit_frequencies(words, off - off[0]),
            "screen": np.asarray(g["screen/frames"][soff[0] : soff[-1]], dtype=np.int8),
            "screen_offsets": soff - soff[0]}


def shard_topk(data: dict, queries: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-k of every query within one shard (global indices via the returned offset)."""
    from .prune import topk_sq_euclidean

    d, i = topk_sq_euclidean(queries, data["E"], k=k, db_sq_norms=data["norms"])
    return d, i, data["shard"].start


def merge(*parts, k: int):
    """Merge shard or partial top-ks (one tree-reduction node)."""
    from .prune import merge_topk

    return merge_topk(list(parts), k=k)


def shard_rerank(data: dict, qwords: list[np.ndarray],
                 cands: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hamming-DTW of each query against its candidates that live in this shard.

    Parameters
    ----------
    qwords : list of np.ndarray [shape=(M_q,), uint32]
    cands : list of np.ndarray [shape=(c_q,), int64]
        Global database rows, all inside this shard.

    Returns
    -------
    scores : list of (np.ndarray [shape=(c_q,)], np.ndarray [shape=(c_q,)])
        Per query, the Hamming-DTW scores and the means of the Hamming distance
        matrices (:func:`msdmatch.dtw.hamming_matrix_mean`), float64.
    """
    from .dtw import bit_frequencies, hamming_dtw_many, hamming_matrix_mean

    s0, off, words = data["shard"].start, data["offsets"], data["words"]
    out = []
    for qw, c in zip(qwords, cands):
        if len(c) == 0 or len(qw) == 0:
            out.append((np.full(len(c), np.inf), np.full(len(c), np.nan)))
            continue
        local = c - s0
        ok = data["ok"][local]
        lens = off[local + 1] - off[local]
        sub_off = np.concatenate([[0], np.cumsum(np.where(ok, lens, 0))]).astype(np.int64)
        sub = np.concatenate([words[off[j] : off[j + 1]] for j in local[ok]]) if ok.any() else np.zeros(0, np.uint32)
        scores = np.full(len(c), np.inf)
        if ok.any():
            keep_off = np.concatenate([[0], sub_off[1:][ok]])
            scores[ok] = hamming_dtw_many(qw, sub, keep_off, penalty=DHS_PENALTY, gully=DHS_GULLY)
        qfreq = bit_frequencies(qw, np.array([0, len(qw)]))[0]
        out.append((scores, hamming_matrix_mean(qfreq, data["bits"][local])))
    return out


def shard_screen(data: dict, qframes: list[np.ndarray], cands: list[np.ndarray]) -> list[np.ndarray]:
    """Screen DTW scores of each query against its candidates that live in this shard.

    Parameters
    ----------
    qframes : list of np.ndarray [shape=(m_q, n_bins), int8]
        The queries' screen frames.
    cands : list of np.ndarray [shape=(c_q,), int64]
        Global database rows, all inside this shard.

    Returns
    -------
    scores : list of np.ndarray [shape=(c_q,), float64]
        :func:`msdmatch.screen.screen_scores` per query.
    """
    from .screen import screen_scores

    s0, off, F = data["shard"].start, data["screen_offsets"], data["screen"]
    return [screen_scores(qf, [F[off[j - s0] : off[j - s0 + 1]] for j in c]) for qf, c in zip(qframes, cands)]


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
    from .dtw import cosine_dtw, cosine_dtw_pair
    from .embed import embed_sequences
    from .features import unit_frames

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
        :func:`msdmatch.features.standardize_bins` of ``X``.
    high : np.ndarray [shape=(n_frames, n_bins - HIGH_BIN), dtype=float32]
        The same of ``X[:, HIGH_BIN:]``: each bin is standardised on its own,
        so only the frames' normalisation differs.
    """
    from .features import standardize_bins, unit_frames

    Z = standardize_bins(X, normalize=False)
    return unit_frames(Z), unit_frames(Z[:, HIGH_BIN:])


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
    from .cluster import worker_threads
    from .store import Store

    Q = Store(q_url, storage_options=storage_options)
    D = Store(db_url, storage_options=storage_options)
    threads = worker_threads()
    return [verify_scores(Q.sequence(qi), [D.sequence(r) for r in rows], nets=nets, threads=threads)
            for qi, rows in jobs]


def dhs_nets(Q, D, models: str | None, dhs: str) -> dict:
    """ONNX paths of DHS model ``dhs`` for the query store ``Q`` and the database ``D``.

    Returns
    -------
    nets : dict
        ``{'query': path, 'db': path, 'downsample': int}``.
    """
    from .embed import resolve_models
    from .modelfile import check_compatible

    infos = [i for i in resolve_models([models] if models else None, Q.modality) if i.name == dhs]
    if not infos:
        raise ModelError(f"DHS model {dhs!r} not found in {models or 'the shipped models'}")
    info = infos[0]
    return {"query": str(check_compatible(info, store_params=Q.params, store_modality=Q.modality)),
            "db": str(check_compatible(info, store_params=D.params, store_modality=D.modality)),
            "downsample": int(info.downsample)}


# ----------------------------------------------------------------- the job


def _model_names(Q, D, models: str | None) -> tuple[str, str]:
    if models:
        from .embed import resolve_models

        infos = resolve_models([models], Q.modality)
        names = {i.kind: i.name for i in infos}
    else:
        names = {"pse": f"pse-{Q.modality}", "dhs": f"dhs-{Q.modality}"}
    for kind in ("pse", "dhs"):
        if kind not in names:
            raise ModelError(f"--models {models!r} holds no {kind.upper()} model")
        for S, role in ((Q, "QUERIES"), (D, "DB")):
            path = f"{kind}/{names[kind]}"
            if path not in S.group or not S.group[path].attrs.get("complete"):
                raise ParameterError(
                    f"{role} store {S.url!r} has no complete {path!r}; run `msdmatch embed {S.url}` first"
                )
    return names["pse"], names["dhs"]


def _require_screen(S, role: str) -> None:
    """Refuse a store whose screen frames are missing or of another definition."""
    from . import screen

    a = S.group["screen/frames"].attrs if "screen/frames" in S.group else {}
    want = {"format_version": screen.FORMAT_VERSION, "pool": screen.POOL}
    got = {k: a.get(k) for k in want}
    if not a.get("complete") or got != want:
        raise ParameterError(
            f"{role} store {S.url!r} has no screen frames of format {want} (found {got if a else 'none'}); "
            f"re-run `msdmatch embed {S.url}` to write them"
        )


def run(queries: str, db: str, out: str | None = None, *, models: str | None = None,
        fusion: str | None = None, prune_k: int | None = None, rerank: int = 300, verify: int = 10,
        keep: str = "rerank", client=None, scheduler: str | None = None, n_workers: int | None = None,
        n_shards: int | None = None, storage_options: dict | None = None, progress: bool = True) -> dict:
    """Match every query of ``queries`` against ``db``.

    Parameters
    ----------
    queries, db : str
        Embedded MIDI and audio stores.
    out : str, optional
        ``.csv``, ``.parquet`` or Zarr URL for the MATCHES table.
    models : str, optional
        Model directory used by ``embed`` (default: the shipped models).
    fusion : str, optional
        Fusion model JSON (default: shipped for the query modality); ``'none'``
        or no shipped model makes ``confidence`` the thesis's DTW confidence
        ``clip(2(1 - s), 0, 1)`` and ranks by it.
    prune_k : int, optional
        PSE survivors (default ``max(1% of db, 1000)``, capped at the db size).
    rerank, verify : int
        DHS survivors R (all screened) and verified candidates V.
    keep : {'rerank', 'all'}
        Rows written per query: the R reranked, or all K pruned.

    Returns
    -------
    summary : dict with ``table`` (dict of columns) and timings.
    """
    from .cluster import client_for
    from .prune import default_k
    from .store import Store

    if keep not in ("rerank", "all"):
        raise ParameterError(f"keep must be 'rerank' or 'all', got {keep!r}")
    for name, v in (("rerank", rerank), ("verify", verify)):
        if v < 1:
            raise ParameterError(f"--{name} must be >= 1, got {v}")
    Q = Store(queries, storage_options=storage_options)
    D = Store(db, storage_options=storage_options)
    if D.modality != "audio":
        raise ParameterError(f"DB store {db!r} holds {D.modality!r} features; expected 'audio' (swapped arguments?)")
    if Q.modality == "audio":
        raise ParameterError(f"QUERIES store {queries!r} holds audio; expected a MIDI store (swapped arguments?)")
    Q.require(params=D.params)  # names the differing parameter and how to fix it
    pse, dhs = _model_names(Q, D, models)
    for S, role in ((Q, "QUERIES"), (D, "DB")):
        _require_screen(S, role)
    nets = dhs_nets(Q, D, models, dhs)
    fusion_model = _load_fusion(fusion, Q.modality)
    if client is None:
        with client_for(scheduler, n_workers=n_workers, quiet=not progress) as c:
            return run(queries, db, out, models=models, fusion=fusion, prune_k=prune_k, rerank=rerank,
                       verify=verify, keep=keep, client=c, n_shards=n_shards,
                       storage_options=storage_options, progress=progress)
    from .cluster import total_threads

    t0 = time.perf_counter()
    client.run(_warm_up)  # numba compiles (or loads its cache) once per worker, outside the timings
    t = {"start": time.perf_counter(), "warm_up": time.perf_counter() - t0}
    K = min(D.n, prune_k or default_k(D.n))
    R, V = min(rerank, K), min(verify, rerank, K)
    qsoff = np.asarray(Q.group["screen/offsets"][:], np.int64)
    qs_all = np.asarray(Q.group["screen/frames"][:], np.int8)
    qframes = [qs_all[a:b] for a, b in zip(qsoff[:-1], qsoff[1:])]
    qE = np.asarray(Q.group[f"pse/{pse}"][:], dtype=np.float32)
    q_ok = np.all(np.isfinite(qE), axis=1)
    qE[~q_ok] = 0.0
    qoff = np.asarray(Q.group[f"dhs/{dhs}/offsets"][:], np.int64)
    qw_all = np.asarray(Q.group[f"dhs/{dhs}/words"][:], np.uint32)
    qwords = [qw_all[a:b] for a, b in zip(qoff[:-1], qoff[1:])]
    shards = plan(D.n, n_shards=n_shards or 2 * total_threads(client))
    data = [client.submit(load_shard, s, url=db, pse=pse, dhs=dhs, storage_options=storage_options,
                          key=f"match-load-shard-{s.sid}-{time.time_ns()}") for s in shards]
    # 1. PSE prune, tree-reduced
    # a task, not scattered data: if a worker dies, Dask can recompute it
    qE_f = client.submit(np.array, qE, pure=False, key=f"match-queries-{time.time_ns()}")
    qwords_f = client.submit(list, qwords, pure=False, key=f"match-query-words-{time.time_ns()}")
    qframes_f = client.submit(list, qframes, pure=False, key=f"match-query-screen-{time.time_ns()}")
    parts = [client.submit(shard_topk, d, qE_f, k=K, key=f"match-prune-{i}-{time.time_ns()}")
             for i, d in enumerate(data)]
    while len(parts) > 1:
        parts = [client.submit(merge, *parts[i : i + 4], k=K, key=f"match-merge-{i}-{time.time_ns()}")
                 for i in range(0, len(parts), 4)]
    pdist, pidx = parts[0].result() if len(shards) > 1 else merge(parts[0].result(), k=K)
    t["prune"] = time.perf_counter()
    # 2. DHS rerank on the workers holding the candidates
    owner = np.searchsorted([s.stop for s in shards], pidx, side="right")
    futs = []
    for sid, d in enumerate(data):
        cands = [pidx[q][owner[q] == sid] for q in range(Q.n)]
        futs.append(client.submit(shard_rerank, d, qwords_f, cands, key=f"match-rerank-{sid}-{time.time_ns()}"))
    dhs_score = np.full(pidx.shape, np.inf)
    dhs_mean = np.full(pidx.shape, np.nan)
    for sid, f in enumerate(futs):
        for q, (s, m) in enumerate(f.result()):
            dhs_score[q, owner[q] == sid] = s
            dhs_mean[q, owner[q] == sid] = m
    t["rerank"] = time.perf_counter()
    # order by (normalised dhs score, pse distance); the top R survive
    from .fusion import dhs_ratio
    from .screen import screen_order

    ratio = dhs_ratio(dhs_score, dhs_mean)
    order = (np.stack([np.lexsort((pdist[q], ratio[q])) for q in range(Q.n)])
             if Q.n else np.zeros((0, K), np.int64))
    # 3. screen the top R on the workers holding them; its order picks the V verified
    top = pidx[np.arange(Q.n)[:, None], order[:, :R]]
    towner = np.searchsorted([s.stop for s in shards], top, side="right")
    futs = [client.submit(shard_screen, d, qframes_f, [top[q][towner[q] == sid] for q in range(Q.n)],
                          key=f"match-screen-{sid}-{time.time_ns()}") for sid, d in enumerate(data)]
    sscore = np.full((Q.n, R), np.inf)
    for sid, f in enumerate(futs):
        for q, s in enumerate(f.result()):
            sscore[q, towner[q] == sid] = s
    for q in range(Q.n):
        so, _ = screen_order(sscore[q], ratio[q, order[q, :R]])
        sscore[q] = sscore[q, so]
        order[q, :R] = order[q, so]
    t["screen"] = time.perf_counter()
    # 4. verify
    jobs = [(q, [int(pidx[q, j]) for j in order[q, :V]]) for q in range(Q.n)]
    nb = max(1, min(len(jobs), 4 * total_threads(client)))
    batches = [jobs[i::nb] for i in range(nb)]
    vf = [client.submit(verify_batch, b, q_url=queries, db_url=db, nets=nets, storage_options=storage_options,
                        key=f"match-verify-{i}-{time.time_ns()}") for i, b in enumerate(batches)]
    vscore = np.full((Q.n, V, len(VERIFY_COLUMNS)), np.inf)
    for b, f in zip(batches, vf):
        for (q, _), s in zip(b, f.result()):
            vscore[q, : len(s)] = s
    t["verify"] = time.perf_counter()
    for f in data:
        f.release()
    table = _assemble(Q, D, pidx, pdist, dhs_score, dhs_mean, order, sscore, vscore, R=R, V=V, keep=keep,
                      fusion_model=fusion_model, q_ok=q_ok)
    if out:
        from .report import write_matches

        write_matches(table, out, storage_options=storage_options)
    t["end"] = time.perf_counter()
    nq = max(Q.n, 1)
    return {"table": table, "queries": Q.n, "db": D.n, "K": K, "R": R, "V": V,
            "threads": total_threads(client), "seconds": t["end"] - t["start"],
            "per_query": {"prune": (t["prune"] - t["start"]) / nq, "rerank": (t["rerank"] - t["prune"]) / nq,
                          "screen": (t["screen"] - t["rerank"]) / nq, "verify": (t["verify"] - t["screen"]) / nq,
                          "total": (t["end"] - t["start"]) / nq},
            "warm_up_seconds": t["warm_up"], "fusion": fusion_model is not None, "out": out}


def summary_line(s: dict) -> str:
    """One-line summary of :func:`run`'s result."""
    pq = s["per_query"]
    return (f"matched {s['queries']} queries against {s['db']} previews (K={s['K']}, R={s['R']}, "
            f"V={s['V']}) in {s['seconds']:.1f} s on {s['threads']} threads: per query "
            f"prune {pq['prune'] * 1e3:.1f} ms, rerank {pq['rerank'] * 1e3:.1f} ms, screen "
            f"{pq['screen'] * 1e3:.1f} ms, verify "
            f"{pq['verify'] * 1e3:.1f} ms, total {pq['total'] * 1e3:.1f} ms -> {s['out']}")


def _warm_up() -> None:
    """Compile the numba kernels in this process (cached on disk after the first time)."""
    from .dtw import cosine_dtw, hamming_dtw_many
    from .prune import topk_sq_euclidean

    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**32, 40, dtype=np.uint32)
    hamming_dtw_many(w[:20], w, np.array([0, 20, 40]))
    X = rng.random((20, 48)).astype(np.float32)
    cosine_dtw(X, X, return_path=False)
    topk_sq_euclidean(X[:2], X, k=3)


def _load_fusion(path: str | None, modality: str):
    from pathlib import Path

    from .modelfile import shipped_model_dir

    if path == "none":
        return None
    p = Path(path) if path else shipped_model_dir() / f"fusion-{modality}.json"
    if not p.is_file():
        if path:
            raise ModelError(f"fusion model {path!r} not found")
        return None
    from .fusion import FusionModel

    return FusionModel.load(str(p))


def _assemble(Q, D, pidx, pdist, dhs_score, dhs_mean, order, sscore, vscore, *, R, V, keep, fusion_model,
              q_ok) -> dict:
    from .dtw import dtw_confidence
    from .report import MATCH_COLUMNS, OPTIONAL_COLUMNS

    cols: dict[str, list] = {c: [] for c in MATCH_COLUMNS + OPTIONAL_COLUMNS}
    dbids = D.ids
    unverified = np.full(len(VERIFY_COLUMNS), np.nan)
    for q in range(Q.n):
        if not q_ok[q]:
            continue
        o = order[q]
        vs = vscore[q]
        pse_d = np.sqrt(np.maximum(pdist[q], 0.0))
        if fusion_model is not None:
            from .fusion import features_for, predict_proba

            conf = predict_proba(fusion_model, features_for(
                {"dhs_score": dhs_score[q, o[:V]], "pse_distance": pse_d[o[:V]],
                 "dhs_matrix_mean": dhs_mean[q, o[:V]], **dict(zip(VERIFY_COLUMNS, vs.T, strict=True))}))
        else:
            conf = dtw_confidence(vs[:, 0])
        vorder = np.lexsort((vs[:, 0], -conf))
        rows = [(o[j], conf[j], vs[j], sscore[q, j], "verify") for j in vorder]
        rows += [(o[j], np.nan, unverified, sscore[q, j], "rerank") for j in range(V, R)]
        if keep == "all":
            rest = np.sort(o[R:])  # pidx is sorted by pse distance already
            rows += [(j, np.nan, unverified, np.nan, "prune") for j in rest]
        for rank, (j, c, v, sc, st) in enumerate(rows, start=1):
            cols["query_id"].append(Q.ids[q])
            cols["rank"].append(rank)
            cols["track_id"].append(dbids[int(pidx[q, j])])
            cols["confidence"].append(float(c))
            cols["dhs_score"].append(float(dhs_score[q, j]))
            cols["pse_distance"].append(float(pse_d[j]))
            cols["dhs_matrix_mean"].append(float(dhs_mean[q, j]))
            for name, x in zip(VERIFY_COLUMNS, v, strict=True):
                cols[name].append(float(x))
            cols["screen_score"].append(float(sc))
            cols["stage"].append(st)
    return {k: np.asarray(v) for k, v in cols.items()}
