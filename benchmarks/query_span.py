"""How well MATCHES' ``query_start``/``query_end`` locate the preview inside the MIDI file, on the demo corpus.

The demo corpus records, per preview, where its 30 s window starts in the
time-warped performance (``recordings.jsonl``); inverting the warp gives the
true start in the MIDI file's own time.  For every correct top-1 match this
prints how far ``query_start`` lies from it.

    python benchmarks/query_span.py --demo demo_out [--split test]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def true_start(plan: dict) -> float:
    """The MIDI time at which the preview window starts (the warp inverted numerically)."""
    from msdmatch.demo.recording import warp_times

    kw = {k: plan["warp_" + k] for k in ("rate", "depth", "period", "phase")}
    t = np.linspace(0.0, 2000.0, 400001)
    return float(np.interp(plan["offset"], warp_times(t, **kw), t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="the folder `msdmatch demo` wrote")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tolerance", type=float, default=0.5, help="seconds")
    a = ap.parse_args()
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
    m = read_matches(str(root / "matches.parquet"))
    errs, missing = [], 0
    for q, tracks in truth.items():
        rows = np.flatnonzero(m["query_id"] == q)
        top = rows[np.argmin(m["rank"][rows])] if len(rows) else None
        if top is None or m["track_id"][top] not in tracks or m["track_id"][top] not in plans:
            continue  # not a correct top-1 (or a duplicate preview without its own plan)
        tid = m["track_id"][top]
        span = rows[(m["track_id"][rows] == tid) & np.isfinite(m["query_start"][rows])]
        if not len(span):
            missing += 1
            continue
        errs.append(abs(float(m["query_start"][span[0]]) - true_start(plans[tid])))
    e = np.asarray(errs)
    n = len(e) + missing
    within = float(np.sum(e <= a.tolerance)) / max(n, 1)
    print(f"correct top-1 matches: {n}; query_start within {a.tolerance} s of the true excerpt start: "
          f"{within:.3f}; median error {np.median(e) if len(e) else float('nan'):.2f} s; "
          f"rows without a span: {missing}")


if __name__ == "__main__":
    main()
