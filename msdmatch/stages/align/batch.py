"""Aligned MIDI for every confident match: ``msdmatch align-matches``.

Plan, work and executor are kept apart:

* :func:`plan` reads MATCHES and the two stores and returns immutable
  :class:`Pair` items: each query whose top row is ``matched`` (or, in a
  table without that column or with ``min_confidence`` given, whose top
  confidence is at least ``min_confidence``), with the MIDI and audio
  locations taken from the stores' ``sources`` arrays;
* :func:`align_shard` aligns a few pairs and writes ``<query_id>.mid`` into
  the output folder, each file whole (temporary file, then rename);
* :func:`run` runs the shards as Dask tasks with
  :func:`msdmatch.executor.run_shards`.

A re-run skips the files already written, so an interrupted run resumes.
Pairs that cannot be aligned (unreadable MIDI, silent audio, an alignment
that covers too little) are listed in ``failures.csv`` of the output folder
with the reason; the job goes on.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from msdmatch.errors import InputError, ParameterError

#: Top-row confidence that counts as a match when MATCHES has no ``matched`` column.
DEFAULT_MIN_CONFIDENCE = 0.5
#: Kind recorded in the output folder's marker.
OUT_KIND = "aligned-midi"
FAILURES = "failures.csv"
_FAILURE_FIELDS = ("query_id", "track_id", "midi", "audio", "reason")


@dataclass(frozen=True)
class Pair:
    """One query to align to its top match."""

    query_id: str
    track_id: str
    midi: str
    audio: str
    confidence: float


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    try:
        return bool(v) and not (isinstance(v, float) and np.isnan(v))
    except (TypeError, ValueError):
        return False


def select_top(table: dict, *, matched: np.ndarray | None, min_confidence: float | None) -> list[tuple[str, str, float]]:
    """``(query_id, track_id, confidence)`` of each query whose top row counts as a match.

    Parameters
    ----------
    table : dict of np.ndarray
        MATCHES columns (``query_id``, ``rank``, ``track_id``, ``confidence``).
    matched : np.ndarray [shape=(n,)] or None
        The table's ``matched`` column, if it has one.
    min_confidence : float or None
        Overrides ``matched``; without either, :data:`DEFAULT_MIN_CONFIDENCE`.
    """
    top = np.nonzero(np.asarray(table["rank"]) == 1)[0]
    out = []
    for r in top:
        conf = float(table["confidence"][r])
        if min_confidence is None and matched is not None:
            ok = _truthy(matched[r])
        else:
            ok = conf >= (DEFAULT_MIN_CONFIDENCE if min_confidence is None else min_confidence)
        if ok and str(table["track_id"][r]):
            out.append((str(table["query_id"][r]), str(table["track_id"][r]), conf))
    return out


def plan(matches: str, *, queries: str, db: str, min_confidence: float | None = None,
         storage_options: dict | None = None) -> tuple[list[Pair], list[dict]]:
    """Pairs to align, and the failures found while planning (ids missing from a store).

    Returns
    -------
    pairs : list of Pair
    failures : list of dict
        Rows with the :data:`_FAILURE_FIELDS`.
    """
    from msdmatch.io.matches_table import read_matches
    from msdmatch.io.store import Store

    table = read_matches(matches, storage_options=storage_options)
    chosen = select_top(table, matched=table.get("matched"), min_confidence=min_confidence)
    Q = Store(queries, storage_options=storage_options)
    D = Store(db, storage_options=storage_options)
    if D.modality != "audio":
        raise ParameterError(f"--db {db!r} holds {D.modality!r} features; expected the audio store (swapped?)")
    if Q.modality == "audio":
        raise ParameterError(f"--queries {queries!r} holds audio; expected the MIDI store (swapped?)")
    qsrc = dict(zip(Q.ids, Q.sources))
    dsrc = dict(zip(D.ids, D.sources))
    pairs, failures = [], []
    for q, t, conf in chosen:
        if q not in qsrc or t not in dsrc:
            what = "query not in the QUERIES store" if q not in qsrc else "track not in the DB store"
            failures.append({"query_id": q, "track_id": t, "midi": qsrc.get(q, ""), "audio": dsrc.get(t, ""),
                             "reason": what})
            continue
        pairs.append(Pair(q, t, qsrc[q], dsrc[t], conf))
    return pairs, failures


def out_name(query_id: str) -> str:
    """File name of a query's aligned MIDI (path separators replaced)."""
    return query_id.replace("/", "_").replace("\\", "_") + ".mid"


def align_one(pair: Pair, *, out_dir: str, soundfont: str | None = None,
              storage_options: dict | None = None) -> dict:
    """Align one pair and write its file; returns ``{'query_id', 'status', 'reason'}``.

    ``status`` is ``written``, ``skipped`` (a file msdmatch aligned is already
    there) or ``failed`` (with the reason).
    """
    from msdmatch.stages.align.pair import align_files, is_aligned_midi

    path = os.path.join(out_dir, out_name(pair.query_id))
    if os.path.exists(path) and is_aligned_midi(path):
        return {"query_id": pair.query_id, "status": "skipped", "reason": ""}
    try:
        s = align_files(pair.midi, pair.audio, path, soundfont=soundfont, storage_options=storage_options)
    except InputError as e:
        return {"query_id": pair.query_id, "status": "failed", "reason": str(e)}
    return {"query_id": pair.query_id, "status": "written", "reason": "", "confidence": s["confidence"],
            "tempo_events": s["tempo_events"]}


def align_shard(pairs: list[Pair], *, out_dir: str, soundfont: str | None = None,
                storage_options: dict | None = None) -> list[dict]:
    """Run :func:`align_one` on each pair of a shard (one Dask task)."""
    return [align_one(p, out_dir=out_dir, soundfont=soundfont, storage_options=storage_options) for p in pairs]


def write_failures(out_dir: str, rows: list[dict]) -> None:
    """Write ``failures.csv`` whole (replacing the previous run's)."""
    from msdmatch.io.outputs import write_whole

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_FAILURE_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_whole(os.path.join(out_dir, FAILURES), buf.getvalue().encode())


def check_out(out: str, *, overwrite: bool = False) -> None:
    """Refuse an output folder before any work (see :func:`msdmatch.io.outputs.check_out_dir`)."""
    from msdmatch.io.outputs import check_out_dir

    if "://" in out and not out.startswith("file://"):
        raise ParameterError(f"--out {out!r}: align-matches writes to a local folder; s3:// is not supported")
    check_out_dir(out, kind=OUT_KIND, overwrite=overwrite)


def run(matches: str, *, queries: str, db: str, out: str, min_confidence: float | None = None,
        soundfont: str | None = None, shard_size: int = 4, client=None, scheduler: str | None = None,
        n_workers: int | None = None, storage_options: dict | None = None, progress: bool = True) -> dict:
    """Write an aligned MIDI file for every confident match of MATCHES into ``out``.

    Parameters
    ----------
    matches : str
        MATCHES in any form :func:`msdmatch.io.matches_table.read_matches` reads
        (``.csv``, ``.parquet``, ``.zarr`` or a Parquet dataset folder).
    queries, db : str
        The MIDI and audio stores MATCHES was computed from (their ``sources``
        locate the files).
    out : str
        Local output folder: ``<query_id>.mid`` files and ``failures.csv``.
    min_confidence : float, optional
        Align the top row when its confidence is at least this, whatever
        ``matched`` says (default: ``matched``, else 0.5).
    soundfont : str, optional
        Soundfont of the MIDI synthesis.
    shard_size : int
        Pairs per Dask task.

    Returns
    -------
    summary : dict
        ``pairs``, ``written``, ``skipped``, ``failed`` and ``out``.
    """
    from msdmatch.executor import run_shards, using_client
    from msdmatch.io.outputs import mark_out_dir

    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ParameterError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    if shard_size < 1:
        raise ParameterError(f"shard_size must be >= 1, got {shard_size}")
    from msdmatch.io.store import filesystem

    fs, fpath = filesystem(matches, storage_options)
    if not fs.exists(fpath):
        raise ParameterError(f"MATCHES {matches!r} does not exist; pass the table `msdmatch match --out` wrote")
    check_out(out)
    pairs, failures = plan(matches, queries=queries, db=db, min_confidence=min_confidence,
                           storage_options=storage_options)
    if soundfont is not None:
        from msdmatch.io.synth import resolve_soundfont

        soundfont = resolve_soundfont(soundfont)
    mark_out_dir(out, kind=OUT_KIND, matches=str(matches))
    shards = [pairs[i: i + shard_size] for i in range(0, len(pairs), shard_size)]
    results = []
    if shards:
        with using_client(client, scheduler=scheduler, n_workers=n_workers, quiet=not progress) as c:
            results = run_shards(c, align_shard, shards, name="align",
                                 kwargs={"out_dir": os.path.abspath(out), "soundfont": soundfont,
                                         "storage_options": storage_options}, progress=progress)
    flat = [r for part in results for r in part]
    by_id = {p.query_id: p for p in pairs}
    for r in flat:
        if r["status"] == "failed":
            p = by_id[r["query_id"]]
            failures.append({"query_id": p.query_id, "track_id": p.track_id, "midi": p.midi, "audio": p.audio,
                             "reason": r["reason"]})
    write_failures(out, failures)
    count = {s: sum(r["status"] == s for r in flat) for s in ("written", "skipped")}
    return {"pairs": len(pairs), **count, "failed": len(failures), "out": out}


def summary_line(s: dict) -> str:
    """One line for the CLI."""
    return (f"aligned {s['written']} of {s['pairs']} confident matches into {s['out']} "
            f"({s['skipped']} already there, {s['failed']} failures in {os.path.join(s['out'], FAILURES)})")

