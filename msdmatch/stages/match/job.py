"""Match stage: PSE prune -> DHS Hamming-DTW rerank -> screen -> cosine-DTW verify -> fusion.

Conventions
-----------
- Query and database stores must have been embedded (``msdmatch embed``)
  with the same PSE and DHS models (``pse/<model>``, ``dhs/<model>``).
- The database is split into contiguous shards; each shard's embeddings and
  hash words are loaded once onto a worker and kept there, so pruning and
  reranking run where the data is.  Shard top-Ks merge by tree reduction.
- The rerank orders candidates by the DHS score over the mean of the
  Hamming distance matrix (:func:`msdmatch.kernels.dtw.hamming_matrix_mean`), the
  same normalisation the verify score applies to its cost matrix: it stops
  candidates whose bits resemble everything from crowding out the match.  The
  DHS model's hub term (:mod:`msdmatch.kernels.hub`) is subtracted from that
  ratio, for the same reason: a preview that aligns cheaply with many MIDI
  files loses its lead.
- The screen (:mod:`msdmatch.kernels.screen`) runs a coarse cosine DTW on the top R
  candidates' screen frames, held by the shards beside the hash words, and
  picks the V that verify sees by the sum of its z-score and the rerank key's.
- Verify (:mod:`msdmatch.stages.match.verify`) runs four cosine DTWs on the top V;
  the fusion uses all four.
- The job (:func:`run`) plans query batches (:mod:`msdmatch.stages.match.plan`);
  each batch goes through prune -> rerank -> screen -> verify -> fusion
  (:mod:`msdmatch.stages.match.shard`, :mod:`msdmatch.stages.match.batch`,
  :mod:`msdmatch.stages.match.verify`) on the cluster (:func:`msdmatch.executor.run_batches`)
  and its rows are committed as one part of MATCHES
  (:mod:`msdmatch.io.matches_table`); a re-run skips committed batches.  The
  client holds only the futures of the batches in flight.
- Output: one row per (query, candidate) with ``query_id, rank, track_id,
  confidence, verify_score, dhs_score, pse_distance, dhs_matrix_mean,
  dhs_hub, verify_std_score, verify_dhs_score, verify_high_score, screen_score, stage``;
  ``stage`` is ``verify`` for the top V (ranked by the fused confidence),
  ``rerank`` for ranks V+1..R (by the screen's combined score) and ``prune``
  beyond (by PSE distance, only with ``keep='all'``).  Unverified rows have
  NaN ``confidence``; ``screen_score`` is the screen DTW's score, NaN beyond R.
  Every row has ``thesis_confidence`` (NaN unless verified), each query's
  top row ``matched``, and the verified row with the best ``verify_score``
  ``query_start, query_end`` (see :mod:`msdmatch.stages.match.batch`).  Queries
  that cannot be matched go to the failures table with a reason.
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.errors import ModelError, ParameterError
from msdmatch.params import MATCH
from msdmatch.stages.match.plan import DEFAULT_BATCH_SIZE, DbShard, QueryBatch, plan, plan_batches
from msdmatch.stages.match.shard import load_shard
from msdmatch.stages.match.verify import dhs_nets

#: Default threshold of ``matched`` when the fusion model ships none (the thesis's c >= 0.5).
DEFAULT_THRESHOLD = 0.5


# ----------------------------------------------------------------- checks


def match_models(Q, D, models: str | None) -> tuple[dict, str]:
    """The PSE and DHS models to match ``Q`` against ``D`` with, checked against both stores.

    Refuses a store without complete embeddings of either model, or embedded
    by another version of it.

    Parameters
    ----------
    Q, D : msdmatch.io.store.Store
        The query and database stores.
    models : str or None
        ``--models`` (a model directory or a directory of them); None: the shipped ones.

    Returns
    -------
    infos : dict
        ``{'pse': ModelInfo, 'dhs': ModelInfo}``.
    digests : str
        ``'<pse name>:<digest>|<dhs name>:<digest>'`` (recorded with the run).
    """
    from msdmatch.stages.embed import embedded_digest, model_digest, resolve_models

    found = {i.kind: i for i in resolve_models([models] if models else None, Q.modality)}
    where = models or "the shipped models"
    out = []
    for kind in ("pse", "dhs"):
        if kind not in found:
            raise ModelError(f"--models {models!r} holds no {kind.upper()} model")
        info, path = found[kind], f"{kind}/{found[kind].name}"
        want = model_digest(info)
        for S, role in ((Q, "QUERIES"), (D, "DB")):
            if path not in S.group or not S.group[path].attrs.get("complete"):
                raise ParameterError(
                    f"{role} store {S.url!r} has no complete {path!r}; run `msdmatch embed {S.url}` first"
                )
            got = embedded_digest(S.group, path)
            if got is not None and got != want:
                raise ModelError(
                    f"{role} store {S.url!r} holds {path} embedded by another version of that model "
                    f"(digest {got}; {where} have {want}): re-run `msdmatch embed {S.url}` with the models "
                    "you match with, or pass the models it was embedded with as --models"
                )
        hub = f"hub/{info.name}"
        if info.hub is not None and (hub not in D.group or not D.group[hub].attrs.get("complete")):
            raise ParameterError(f"DB store {D.url!r} has no complete {hub!r} for {info.name}'s hub correction; "
                                 f"run `msdmatch embed {D.url}` first")
        out.append(f"{info.name}:{want}")
    return found, "|".join(out)


def _require_screen(S, role: str) -> None:
    """Refuse a store whose screen frames are missing or of another definition."""
    from msdmatch.kernels import screen

    a = S.group["screen/frames"].attrs if "screen/frames" in S.group else {}
    want = {"format_version": screen.FORMAT_VERSION, "pool": screen.POOL}
    got = {k: a.get(k) for k in want}
    if not a.get("complete") or got != want:
        raise ParameterError(
            f"{role} store {S.url!r} has no screen frames of format {want} (found {got if a else 'none'}); "
            f"re-run `msdmatch embed {S.url}` to write them"
        )


def _fusion_path(path: str | None, modality: str):
    from pathlib import Path

    from msdmatch.io.modelfile import shipped_model_dir

    if path == "none":
        return None
    p = Path(path) if path else shipped_model_dir() / f"fusion-{modality}.json"
    if not p.is_file():
        if path:
            raise ModelError(f"fusion model {path!r} not found")
        return None
    return p


def _load_fusion(path: str | None, modality: str):
    p = _fusion_path(path, modality)
    if p is None:
        return None
    from msdmatch.kernels.fusion import FusionModel

    return FusionModel.load(str(p))


def _ids_chunks(S, n: int | None = None, chunk: int = 65536):
    n = S.n if n is None else n
    for a in range(0, n, chunk):
        yield S.strings("ids", a, min(n, a + chunk))


def _db_identity(D) -> str:
    from msdmatch.stages.match.plan import ids_digest

    return ids_digest(_ids_chunks(D)) + f"/r{int(D.attrs.get('revision', 0))}"


# ----------------------------------------------------------------- one batch, on the cluster


def _db_ids(url: str, storage_options: dict | None):
    """The database's ids, read once per worker process."""
    key = (url, repr(sorted((storage_options or {}).items())))
    cache = _DB_IDS
    if key not in cache:
        from msdmatch.io.store import open_group

        cache.clear()
        cache[key] = open_group(url, storage_options=storage_options)["ids"][:]
    return cache[key]


_DB_IDS: dict = {}


def _commit_batch(ranked: dict, *verified: dict, qb_ids: list[str], batch, out, db: str, R: int, V: int,
                  keep: str, fusion_model, threshold: float, storage_options: dict | None,
                  collect: bool) -> dict:
    """The batch's rows and failures (:func:`msdmatch.stages.match.batch.assemble`), committed to ``out``."""
    from msdmatch.stages.match.batch import assemble

    table, failures, cpu = assemble(ranked, list(verified), ids=qb_ids, db_ids=_db_ids(db, storage_options),
                                    R=R, V=V, keep=keep, fusion_model=fusion_model, threshold=threshold)
    if out is not None:
        out.commit(batch, table, failures)
    return {"batch": batch, "rows": len(table["query_id"]), "failures": failures, "cpu": cpu,
            "table": table if collect else None}


def _pick(d: dict, key: str):
    return d[key]


def _batch_graph(submit, batch: QueryBatch, *, shards: list[DbShard], data: list, queries: str, db: str,
                 pse: str, dhs: str, K: int, R: int, V: int, keep: str, nets: dict, fusion_model,
                 threshold: float, frame_seconds: float, verify_chunks: int, out, collect: bool,
                 storage_options: dict | None):
    """Submit one batch's tasks: prune per shard, merge, rerank per shard, screen per shard, verify, commit."""
    from msdmatch.stages.match import batch as mb
    from msdmatch.stages.match import prune, rerank, screen
    from msdmatch.stages.match.verify import verify_chunk

    so = storage_options
    qb = submit(mb.load_queries, batch, url=queries, pse=pse, dhs=dhs, storage_options=so, name="match-queries")
    parts = [submit(prune.shard_prune_batch, d, qb, k=K, name="match-prune") for d in data]
    while len(parts) > 1:
        parts = [submit(prune.merge_batch, *parts[i : i + 4], k=K, name="match-merge") for i in range(0, len(parts), 4)]
    pruned = parts[0] if len(data) > 1 else submit(prune.merge_batch, parts[0], k=K, name="match-merge")
    reranks = [submit(rerank.shard_rerank_batch, d, qb, pruned, name="match-rerank") for d in data]
    failed = submit(_pick, qb, "failed", name="match-failed")
    ranked = submit(rerank.rerank_order, pruned, reranks, shards=shards, failed=failed, name="match-order")
    top = submit(screen.top_rows, ranked, R=R, name="match-top")
    screens = [submit(screen.shard_screen_batch, d, qb, top, name="match-screen") for d in data]
    ranked = submit(screen.screen_select, ranked, screens, shards=shards, R=R, name="match-select")
    ids = submit(_pick, qb, "ids", name="match-ids")
    verified = []
    for c in range(verify_chunks):
        jobs = submit(_verify_jobs, ranked, c, start=batch.start, V=V, chunks=verify_chunks, name="match-jobs")
        verified.append(submit(verify_chunk, jobs, q_url=queries, db_url=db, nets=nets,
                               frame_seconds=frame_seconds, storage_options=so, name="match-verify"))
    return submit(_commit_batch, ranked, *verified, qb_ids=ids, batch=batch, out=out, db=db, R=R, V=V,
                  keep=keep, fusion_model=fusion_model, threshold=threshold, storage_options=so,
                  collect=collect, name="match-commit")


def _verify_jobs(ranked: dict, c: int, *, start: int, V: int, chunks: int) -> list:
    from msdmatch.stages.match.batch import verify_jobs

    js = verify_jobs(ranked, start=start, V=V, chunks=chunks)
    return js[c] if c < len(js) else []


# ----------------------------------------------------------------- the job


def run(queries: str, db: str, out: str | None = None, *, models: str | None = None,
        fusion: str | None = None, prune_k: int | None = None, rerank: int = MATCH.rerank, verify: int = MATCH.verify,
        keep: str = MATCH.keep, threshold: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        overwrite: bool = False, client=None, scheduler: str | None = None, n_workers: int | None = None,
        n_shards: int | None = None, max_in_flight: int | None = None, storage_options: dict | None = None,
        progress: bool = True) -> dict:
    """Match every query of ``queries`` against ``db``, batch by batch.

    Parameters
    ----------
    queries, db : str
        Embedded MIDI and audio stores.
    out : str, optional
        MATCHES: ``.csv``, ``.parquet``, ``.zarr``, or a folder name without
        an extension (a Parquet dataset, one part per batch); see
        :mod:`msdmatch.io.matches_table`.  Committed batches of the same run are
        skipped on a re-run.  Without it, the table is returned instead.
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
    threshold : float in [0, 1], optional
        ``matched`` = a query's top confidence >= threshold (default: the
        fusion model's ``threshold``, else :data:`DEFAULT_THRESHOLD`).
    batch_size : int
        Queries per batch (the unit of work, memory and commit).
    overwrite : bool
        Replace an msdmatch MATCHES output of another run at ``out``.
    max_in_flight : int, optional
        Batches submitted at once (default: 2 per worker thread, at least 2).

    Returns
    -------
    summary : dict
        ``queries``, ``db``, ``K``, ``R``, ``V``, ``threshold``, ``batches_run``,
        ``batches_skipped``, ``rows``, ``failures`` (count), ``per_query``
        (CPU-seconds per query of ``prune``, ``rerank``, ``screen``, ``verify``,
        ``span``, ``assemble`` and ``total``), ``seconds``, ``threads``;
        ``table`` and ``failures_table`` when ``out`` is None.
    """
    if keep not in ("rerank", "all"):
        raise ParameterError(f"keep must be 'rerank' or 'all', got {keep!r}")
    for name, v in (("rerank", rerank), ("verify", verify), ("batch-size", batch_size)):
        if v < 1:
            raise ParameterError(f"--{name} must be >= 1, got {v}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ParameterError(f"--threshold must be in [0, 1], got {threshold}")
    if out is not None:
        from msdmatch.io.matches_table import check_place

        check_place(str(out), storage_options=storage_options)  # before the stores are opened
    from msdmatch.executor import using_client
    from msdmatch.io.store import Store
    from msdmatch.kernels.prune import default_k
    from msdmatch.kernels.screen import ORDER_VERSION
    from msdmatch.stages.match.plan import MatchParams, ids_digest, run_identity

    Q = Store(queries, storage_options=storage_options)
    D = Store(db, storage_options=storage_options)
    if D.n == 0:
        raise ParameterError(f"DB store {db!r} is empty: every input failed ({len(D.failures())} rows in its "
                             "failures table say why); featurize previews that decode before matching")
    if D.modality != "audio":
        raise ParameterError(f"DB store {db!r} holds {D.modality!r} features; expected 'audio' (swapped arguments?)")
    if Q.modality == "audio":
        raise ParameterError(f"QUERIES store {queries!r} holds audio; expected a MIDI store (swapped arguments?)")
    Q.require(params=D.params)  # names the differing parameter and how to fix it
    infos, digests = match_models(Q, D, models)
    pse, dhs = infos["pse"].name, infos["dhs"].name
    for S, role in ((Q, "QUERIES"), (D, "DB")):
        _require_screen(S, role)
    nets = dhs_nets(Q, D, infos["dhs"])
    fusion_model = _load_fusion(fusion, Q.modality)
    if threshold is None:
        threshold = float(fusion_model.threshold) if fusion_model is not None else DEFAULT_THRESHOLD
    K = min(D.n, prune_k or default_k(D.n))
    R, V = min(rerank, K), min(verify, rerank, K)
    fpath = _fusion_path(fusion, Q.modality)
    import hashlib

    fdigest = hashlib.sha256(fpath.read_bytes()).hexdigest()[:16] if fpath is not None else "none"
    params = MatchParams(prune_k=K, rerank=R, verify=V, keep=keep, pse=pse, dhs=dhs, fusion=fdigest,
                         threshold=float(threshold), screen_order=ORDER_VERSION, models=digests)
    identity = run_identity(params, db_n=D.n, db_ids=_db_identity(D), queries_n=Q.n,
                            queries_ids=ids_digest(_ids_chunks(Q)))
    target = resume = None
    done: tuple = ()
    if out is not None:
        from msdmatch.io.matches_table import check_out

        target, resume = check_out(str(out), identity=identity, overwrite=overwrite, storage_options=storage_options,
                                   prefix_digest=lambda n: ids_digest(_ids_chunks(Q, n)))
        done = resume.done
        batch_size = resume.batch_size or batch_size
    batches = plan_batches(Q.n, batch_size=batch_size, done=done) if not (resume and resume.action == "complete") \
        else []
    n_skipped = len(done) if resume is None or resume.action != "complete" else -1
    summary = {"queries": Q.n, "db": D.n, "K": K, "R": R, "V": V, "threshold": float(threshold),
               "batch_size": batch_size, "batches_run": len(batches), "batches_skipped": n_skipped,
               "queries_run": int(sum(b.size for b in batches)), "fusion": fusion_model is not None,
               "out": out}
    if target is not None and resume is not None and resume.action == "complete":
        from msdmatch.io.matches_table import read_failures

        summary.update(batches_skipped=len(plan_batches(Q.n, batch_size=batch_size)), rows=None,
                       failures=len(read_failures(str(out), storage_options=storage_options)["query_id"]),
                       per_query={}, seconds=0.0, threads=0, complete_already=True)
        return summary
    if target is not None:
        target.dataset.write_meta({"run": identity, "batch_size": batch_size, "complete": False})
    with using_client(client, scheduler=scheduler, n_workers=n_workers, quiet=not progress) as c:
        summary.update(_execute(c, batches, Q=Q, D=D, queries=queries, db=db, pse=pse, dhs=dhs, K=K, R=R, V=V,
                                keep=keep, nets=nets, fusion_model=fusion_model, threshold=float(threshold),
                                out=target, n_shards=n_shards, max_in_flight=max_in_flight,
                                storage_options=storage_options, progress=progress))
    if target is not None:
        t0 = time.perf_counter()
        summary.update(target.finish(meta={"run": identity, "batch_size": batch_size}))
        summary["finish_seconds"] = time.perf_counter() - t0
    return summary


def _execute(client, batches: list[QueryBatch], *, Q, D, queries: str, db: str, pse: str, dhs: str, K: int,
             R: int, V: int, keep: str, nets: dict, fusion_model, threshold: float, out, n_shards: int | None,
             max_in_flight: int | None, storage_options: dict | None, progress: bool) -> dict:
    """Run the batches on ``client``; the summary's counts, timings and (without ``out``) the table."""
    from msdmatch.executor import hold, release, run_batches, total_threads

    threads = total_threads(client)
    t0 = time.perf_counter()
    if not batches:
        return {"rows": 0, "failures": 0, "per_query": {}, "seconds": 0.0, "threads": threads,
                **({"table": _concat([]), "failures_table": _concat_failures([])} if out is None else {})}
    client.run(_warm_up)  # numba compiles (or loads its cache) once per worker, outside the timings
    warm = time.perf_counter() - t0
    shards = plan(D.n, n_shards=n_shards or 2 * threads)
    data = hold(client, load_shard, shards, name="match-load-shard", url=db, pse=pse, dhs=dhs,
                storage_options=storage_options)
    t1 = time.perf_counter()
    try:
        results = run_batches(
            client, batches,
            lambda submit, b: _batch_graph(
                submit, b, shards=shards, data=data, queries=queries, db=db, pse=pse, dhs=dhs, K=K, R=R, V=V,
                keep=keep, nets=nets, fusion_model=fusion_model, threshold=threshold,
                frame_seconds=Q.params.frame_seconds, verify_chunks=max(1, min(b.size, 2 * threads)),
                out=out, collect=out is None, storage_options=storage_options),
            name="match", max_in_flight=max_in_flight or max(2, 2 * threads), progress=progress,
            unit="queries", weight=lambda b: b.size)
    finally:
        release(data)
    wall = time.perf_counter() - t1
    nq = max(1, sum(b.size for b in batches))
    stages = ("prune", "rerank", "screen", "verify", "span", "assemble")
    cpu = {s: sum(r["cpu"].get(s, 0.0) for r in results) for s in stages}
    per_query = {s: cpu[s] / nq for s in stages}
    per_query["total"] = sum(cpu.values()) / nq
    s = {"rows": int(sum(r["rows"] for r in results)),
         "failures": int(sum(len(r["failures"]["query_id"]) for r in results)),
         "per_query": per_query, "wall_per_query": wall / nq, "seconds": wall, "warm_up_seconds": warm,
         "threads": threads}
    if out is None:
        s["table"] = _concat([r["table"] for r in results])
        s["failures_table"] = _concat_failures([r["failures"] for r in results])
    return s


def _concat(tables: list[dict]) -> dict:
    from msdmatch.evaluation.metrics import MATCH_COLUMNS, OPTIONAL_COLUMNS
    from msdmatch.stages.match.batch import DECISION_COLUMNS

    if not tables:
        return {c: np.zeros(0) for c in MATCH_COLUMNS + OPTIONAL_COLUMNS + DECISION_COLUMNS}
    return {c: np.concatenate([t[c] for t in tables]) for c in tables[0]}


def _concat_failures(parts: list[dict]) -> dict:
    from msdmatch.stages.match.batch import FAILURE_COLUMNS

    return {c: np.concatenate([np.zeros(0, str)] + [p[c] for p in parts]).astype(str) for c in FAILURE_COLUMNS}


def summary_line(s: dict) -> str:
    """One-line summary of :func:`run`'s result."""
    if s.get("complete_already"):
        return (f"{s['out']} already holds the matches of all {s['queries']} queries against {s['db']} previews "
                f"(K={s['K']}, R={s['R']}, V={s['V']}); nothing to do ({s['failures']} failed queries)")
    pq = s["per_query"]
    cost = (f"CPU per query prune {pq['prune'] * 1e3:.1f} ms, rerank {pq['rerank'] * 1e3:.1f} ms, screen "
            f"{pq['screen'] * 1e3:.1f} ms, verify {pq['verify'] * 1e3:.1f} ms, total {pq['total'] * 1e3:.1f} ms "
            f"(query span {pq['span'] * 1e3:.1f} ms, rows {pq['assemble'] * 1e3:.1f} ms)"
            if pq else "no batch to run")
    return (f"matched {s['queries']} queries against {s['db']} previews (K={s['K']}, R={s['R']}, V={s['V']}): "
            f"{s['batches_run']} batches run, {s['batches_skipped']} already done, {s['failures']} failed "
            f"queries, in {s['seconds']:.1f} s on {s['threads']} threads; {cost}; matched = confidence >= "
            f"{s['threshold']:g} -> {s['out']}")


def _warm_up() -> None:
    """Compile the numba kernels in this process (cached on disk after the first time)."""
    from msdmatch.kernels.dtw import cosine_dtw, hamming_dtw_many
    from msdmatch.kernels.prune import topk_sq_euclidean

    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**32, 40, dtype=np.uint32)
    hamming_dtw_many(w[:20], w, np.array([0, 20, 40]))
    X = rng.random((20, 48)).astype(np.float32)
    cosine_dtw(X, X, return_path=False)
    cosine_dtw(X, X, return_path=True)
    topk_sq_euclidean(X[:2], X, k=3)
