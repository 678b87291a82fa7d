"""How well MATCHES' ``query_start``/``query_end`` locate the preview inside the MIDI file, on the demo corpus.

The demo corpus records, per preview, where its 30 s window starts in the
time-warped performance (``recordings.jsonl``); inverting the warp gives the
true span in the MIDI file's own time: ``[warp^-1(offset), warp^-1(offset +
30 s)]``, its end cut at the MIDI file's last note-off.  For every correct
top-1 match this prints how far ``query_start`` and ``query_end`` lie from
it.

The demo's songs loop (music21 pieces are repeated to a minimum length, the
generated songs repeat sections verbatim), so the notes of a preview often
occur at another place in the MIDI file too, where no audio feature can tell
the two apart.  Besides the strict figure this prints the fraction whose span
is within the tolerance of the true span *or* of a span shifted by ``s``
that holds the same notes (``SAME_NOTES`` of the notes in each span recur in
the other with the same pitch, onsets within 30 ms of ``+s`` / ``-s``).

``--peer`` recomputes the spans of the same pairs from the demo's feature
stores, with :func:`msdmatch.stages.match.verify.query_span` and with the
previous recipe (the endpoints of the cosine-DTW path on the features as
stored), and prints both with their CPU milliseconds per pair.

    python benchmarks/query_span.py --demo demo_out [--split test] [--matches M] [--peer]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

#: Fraction of a span's notes that must recur (both ways) for another span to count as the same music.
SAME_NOTES = 0.95
#: Onset tolerance of a recurring note, seconds.
ONSET_TOL = 0.03


def true_span(plan: dict, midi_end: float) -> tuple[float, float]:
    """The MIDI times at which the preview window starts and ends (the warp inverted numerically)."""
    from msdmatch.demo.recording import PREVIEW_SECONDS, warp_times

    kw = {k: plan["warp_" + k] for k in ("rate", "depth", "period", "phase")}
    t = np.linspace(0.0, 2000.0, 400001)
    w = warp_times(t, **kw)
    start = float(np.interp(plan["offset"], w, t))
    return start, min(float(np.interp(plan["offset"] + PREVIEW_SECONDS, w, t)), midi_end)


def _recurring(onsets: np.ndarray, lo: float, hi: float, shift: float) -> float:
    """Fraction of the notes with onset in ``[lo, hi)`` that recur with the same pitch ``shift`` s later."""
    src = onsets[(onsets[:, 0] >= lo) & (onsets[:, 0] < hi)]
    if not len(src):
        return 0.0
    hits = sum(np.any(np.abs(onsets[onsets[:, 1] == p, 0] - (t + shift)) <= ONSET_TOL) for t, p in src)
    return hits / len(src)


def same_music_shift(onsets: np.ndarray, start: float, end: float, guess: float, *,
                     search: float = 0.5, step: float = 0.01) -> tuple[float, float]:
    """The shift within ``guess - start +- search`` whose span best repeats ``[start, end]``.

    Parameters
    ----------
    onsets : np.ndarray [shape=(n_notes, 2)]
        ``(onset seconds, pitch)`` of every note of the MIDI file.
    start, end : float
        The true span.
    guess : float
        An estimated start.

    Returns
    -------
    shift, fraction : float
        The shift and the smaller of the fractions of either span's notes
        that recur in the other.
    """
    best = (0.0, -1.0)
    for s in np.arange(guess - start - search, guess - start + search + step / 2, step):
        f = min(_recurring(onsets, start, end, s), _recurring(onsets, start + s, end + s, -s))
        if f > best[1]:
            best = (float(s), f)
    return best


def _previous_recipe(X: np.ndarray, Y: np.ndarray, *, frame_seconds: float) -> tuple[float, float]:
    """The span before it was measured: path endpoints of the cosine DTW on the features as stored."""
    from msdmatch.kernels.dtw import cosine_dtw
    from msdmatch.stages.match.verify import VERIFY_GULLY

    _, path = cosine_dtw(X, Y, gully=VERIFY_GULLY, return_path=True)
    return float(path[0, 0] * frame_seconds), float((path[-1, 0] + 1) * frame_seconds)


def _score(spans: list, truths: list, onsets: list, tol: float) -> dict:
    """Strict and same-music fractions of spans within ``tol`` s at both ends; a missing span (None) misses."""
    nan = (float("nan"), float("nan"))
    es = np.array([abs(s - t[0]) for (s, _), t in zip([x or nan for x in spans], truths, strict=True)])
    ee = np.array([abs(e - t[1]) for (_, e), t in zip([x or nan for x in spans], truths, strict=True)])
    both = (es <= tol) & (ee <= tol)
    same = both.copy()
    for k in np.flatnonzero(~both & np.isfinite(es) & np.isfinite(ee)):
        (s, e), (ts, te) = spans[k], truths[k]
        sh, f = same_music_shift(onsets[k], ts, te, s)
        same[k] = f >= SAME_NOTES and abs(s - ts - sh) <= tol and abs(e - te - sh) <= tol
    n = max(len(spans), 1)
    return {"start": float(np.sum(es <= tol)) / n, "end": float(np.sum(ee <= tol)) / n,
            "both": float(np.sum(both)) / n, "both_or_same_music": float(np.sum(same)) / n,
            "median_start_err": float(np.nanmedian(es)) if np.isfinite(es).any() else float("nan"),
            "median_end_err": float(np.nanmedian(ee)) if np.isfinite(ee).any() else float("nan")}


def _line(name: str, n: int, s: dict, tol: float) -> str:
    return (f"{name}: {n} correct top-1 matches; within {tol} s of the true span: start {s['start']:.3f}, "
            f"end {s['end']:.3f}, both {s['both']:.3f}; both, or of a span holding the same notes: "
            f"{s['both_or_same_music']:.3f}; median error start {s['median_start_err']:.2f} s, "
            f"end {s['median_end_err']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="the folder `msdmatch demo` wrote")
    ap.add_argument("--matches", help="MATCHES to measure (default: DEMO/matches.parquet)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tolerance", type=float, default=0.5, help="seconds")
    ap.add_argument("--peer", action="store_true",
                    help="also recompute the spans from DEMO's stores, now and with the previous recipe")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    import pretty_midi

    from msdmatch.io.matches_table import read_matches

    root = Path(a.demo)
    plans = {}
    for line in open(root / "corpus" / "recordings.jsonl"):
        r = json.loads(line)
        if r.get("query_id") and not r.get("error") and "warp_rate" in r.get("plan", {}):
            plans[r["track_id"]] = r["plan"]
    with open(root / "corpus" / "split.csv", newline="") as f:
        truth = {}
        for r in csv.DictReader(f):
            if r["split"] == a.split and r["query_id"]:
                truth.setdefault(r["query_id"], set()).add(r["track_id"])
    m = read_matches(a.matches or str(root / "matches.parquet"))
    pairs, spans, truths, onsets, missing = [], [], [], [], 0
    for q, tracks in truth.items():
        rows = np.flatnonzero(m["query_id"] == q)
        top = rows[np.argmin(m["rank"][rows])] if len(rows) else None
        if top is None or m["track_id"][top] not in tracks or m["track_id"][top] not in plans:
            continue  # not a correct top-1 (or a duplicate preview without its own plan)
        tid = m["track_id"][top]
        span = rows[(m["track_id"][rows] == tid) & np.isfinite(m["query_start"][rows])]
        missing += not len(span)
        pm = pretty_midi.PrettyMIDI(str(root / "corpus" / "midi" / f"{q}.mid"))
        pairs.append((q, tid))
        spans.append((float(m["query_start"][span[0]]), float(m["query_end"][span[0]])) if len(span) else None)
        truths.append(true_span(plans[tid], pm.get_end_time()))
        onsets.append(np.array([(n.start, n.pitch) for i in pm.instruments for n in i.notes]))
    out = {"split": a.split, "tolerance_s": a.tolerance, "pairs": len(pairs), "rows_without_span": missing,
           "matches": _score(spans, truths, onsets, a.tolerance)}
    print(_line("MATCHES", len(pairs), out["matches"], a.tolerance) + f"; rows without a span (misses): {missing}")
    if a.peer:
        from msdmatch.io.store import Store
        from msdmatch.stages.match.verify import query_span

        Q = Store(str(root / "queries-synth.zarr"))
        D = Store(str(root / "db.zarr"))
        qi, di = {q: k for k, q in enumerate(Q.ids)}, {t: k for k, t in enumerate(D.ids)}
        fs = Q.params.frame_seconds
        data = [(Q.sequence(qi[q]), D.sequence(di[t])) for q, t in pairs]
        for name, fn in (("query_span", query_span), ("previous recipe", _previous_recipe)):
            fn(*data[0], frame_seconds=fs)  # compile outside the timing
            t0 = time.process_time()
            got = [fn(X, Y, frame_seconds=fs) for X, Y in data]
            ms = (time.process_time() - t0) / max(len(data), 1) * 1e3
            out[name] = {**_score(got, truths, onsets, a.tolerance), "cpu_ms_per_pair": ms}
            print(_line(name, len(got), out[name], a.tolerance) + f"; {ms:.1f} ms CPU per pair")
        print(f"CPU ratio query_span / previous recipe: "
              f"{out['query_span']['cpu_ms_per_pair'] / out['previous recipe']['cpu_ms_per_pair']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
