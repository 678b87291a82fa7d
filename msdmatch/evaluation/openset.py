"""Open-set evaluation sets: queries of which a share has no recording in the database.

Most real MIDI files have no preview in the database, so a confidence must be
fitted and measured on queries like that.  This module plans them from demo
corpora (``msdmatch demo-data``): it takes the queries of one split, draws
the share ``fraction`` of them whose true previews (every duplicate too)
are removed from the database, and writes manifests and truth files that the
ordinary stages read.

Conventions
-----------
* A truth table maps each query to the set of its valid track ids (several
  for duplicate previews); an empty set means no match exists.
* Which queries lose their previews is fixed by a hash of ``(seed, query_id)``
  (:func:`removed_queries`), so a plan is reproducible and does not depend on
  the order of the rows.
* ``halves=2`` plans two databases, ``a`` and ``b``, that remove
  complementary halves: every query is then matched once with and once
  without its recording, so one query set gives as many open as closed cases.

Files written by :func:`write_open_set` into ``out_dir``::

    queries.txt        MIDI files of the split's queries (a featurize manifest)
    db-closed.txt      every preview
    db-a.txt, db-b.txt every preview but those of removed half a (b)
    truth-closed.csv   query_id,track_id (one row per valid track)
    truth-a.csv, truth-b.csv   the same, with an empty track_id for removed queries
    openset.json       counts, seed, fraction, corpora

Run it as ``python -m msdmatch.evaluation.openset CORPUS [EXTRA_CORPUS ...] --split valid --out DIR``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence

from msdmatch.errors import ParameterError

__all__ = ["removed_queries", "truth_sets", "open_truth", "write_open_set"]


def truth_sets(query_ids: Iterable[str], track_ids: Iterable[str]) -> dict[str, set[str]]:
    """Group truth rows by query: ``{query_id: {track_id, ...}}`` (empty ids dropped).

    Parameters
    ----------
    query_ids, track_ids : iterable of str [length n_rows]
        One row per (query, valid track); an empty ``track_id`` marks a query
        with no match.

    Returns
    -------
    sets : dict of str to set of str
        Every query of the rows, with its valid tracks (an empty set for none).
    """
    out: dict[str, set[str]] = {}
    for q, t in zip(query_ids, track_ids, strict=True):
        q, t = str(q), ("" if t is None else str(t))
        out.setdefault(q, set())
        if t and t.lower() != "nan":
            out[q].add(t)
    return out


def removed_queries(queries: Sequence[str], *, fraction: float = 0.5, seed: int = 0) -> set[str]:
    """The ``round(fraction * n)`` queries that lose their recordings.

    Parameters
    ----------
    queries : sequence of str
        Query ids (order does not matter).
    fraction : float in [0, 1]
    seed : int

    Returns
    -------
    removed : set of str
        The queries with the smallest ``blake2b(seed, query_id)``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ParameterError(f"fraction={fraction!r} must be in [0, 1]")
    uq = sorted(set(map(str, queries)))
    key = {q: hashlib.blake2b(f"openset:{seed}:{q}".encode(), digest_size=8).digest() for q in uq}
    return set(sorted(uq, key=key.__getitem__)[: int(round(fraction * len(uq)))])


def open_truth(truth: Mapping[str, set[str]], removed: set[str]) -> dict[str, set[str]]:
    """The truth once the recordings of ``removed`` queries are gone from the database."""
    return {q: (set() if q in removed else set(t)) for q, t in truth.items()}


def _read_split(corpus: str) -> list[dict[str, str]]:
    path = os.path.join(corpus, "split.csv")
    if not os.path.isfile(path):
        raise ParameterError(f"{corpus!r} has no split.csv; build it with `msdmatch demo-data {corpus}`")
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_truth(path: str, truth: Mapping[str, set[str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id\n")
        for q in sorted(truth):
            fh.writelines(f"{q},{t}\n" for t in (sorted(truth[q]) or [""]))


def _write_list(path: str, paths: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(p + "\n" for p in paths)


def write_open_set(corpus: str, *, out_dir: str, extra: Sequence[str] = (), split: str = "valid",
                   fraction: float = 0.5, seed: int = 0, halves: int = 2) -> dict:
    """Plan the open-set sets of ``split``'s queries of ``corpus`` (see the module docstring).

    Parameters
    ----------
    corpus : str
        A demo corpus directory (``midi/``, ``audio/``, ``split.csv``).
    out_dir : str
        Created if missing; the files listed above are (over)written.
    extra : sequence of str
        More corpora whose previews join the database as distractors, except
        those of songs in the ``test`` split (unless ``split`` is ``test``),
        so that a calibration database holds no test song.
    split : str
        The queries' split.
    fraction : float
        Share of the queries whose recordings ``db-a`` lacks.
    seed : int
    halves : {1, 2}
        2 also writes ``db-b``/``truth-b``, removing the other queries.

    Returns
    -------
    summary : dict
        Also written to ``openset.json``.
    """
    if halves not in (1, 2):
        raise ParameterError(f"halves={halves!r} must be 1 or 2")
    os.makedirs(out_dir, exist_ok=True)
    rows = _read_split(corpus)
    audio = {r["track_id"]: os.path.realpath(os.path.join(corpus, "audio", r["track_id"] + ".mp3"))
             for r in rows}
    for c in extra:
        for r in _read_split(c):
            if split == "test" or r["split"] != "test":
                audio.setdefault(r["track_id"], os.path.realpath(os.path.join(c, "audio", r["track_id"] + ".mp3")))
    q_rows = [r for r in rows if r["query_id"] and r["split"] == split]
    if not q_rows:
        raise ParameterError(f"{corpus}/split.csv has no queries of split {split!r}")
    truth = truth_sets([r["query_id"] for r in q_rows], [r["track_id"] for r in q_rows])
    _write_list(os.path.join(out_dir, "queries.txt"),
                [os.path.realpath(os.path.join(corpus, "midi", q + ".mid")) for q in sorted(truth)])
    _write_list(os.path.join(out_dir, "db-closed.txt"), [audio[t] for t in sorted(audio)])
    _write_truth(os.path.join(out_dir, "truth-closed.csv"), truth)
    gone_a = removed_queries(list(truth), fraction=fraction, seed=seed)
    plans = {"a": gone_a}
    if halves == 2:
        plans["b"] = set(truth) - gone_a
    summary: dict = {"corpus": os.path.realpath(corpus), "extra": [os.path.realpath(c) for c in extra],
                     "split": split, "fraction": fraction, "seed": seed, "queries": len(truth),
                     "db_closed": len(audio)}
    for name, gone in plans.items():
        drop = set().union(*(truth[q] for q in gone)) if gone else set()
        _write_list(os.path.join(out_dir, f"db-{name}.txt"), [audio[t] for t in sorted(audio) if t not in drop])
        _write_truth(os.path.join(out_dir, f"truth-{name}.csv"), open_truth(truth, gone))
        summary[f"db_{name}"] = len(audio) - len(drop & set(audio))
        summary[f"no_match_{name}"] = len(gone)
    with open(os.path.join(out_dir, "openset.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m msdmatch.evaluation.openset``: see the module docstring."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m msdmatch.evaluation.openset", description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("extra", nargs="*", help="corpora whose non-test previews join the database")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--halves", type=int, default=2, choices=(1, 2))
    a = ap.parse_args(argv)
    try:
        s = write_open_set(a.corpus, out_dir=a.out, extra=a.extra, split=a.split, fraction=a.fraction,
                           seed=a.seed, halves=a.halves)
    except ParameterError as e:
        print(f"msdmatch: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(s))


if __name__ == "__main__":  # pragma: no cover
    main()
