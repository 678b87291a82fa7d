"""Alignment accuracy against ground truth, next to a chroma-DTW peer in the same run.

Ground truth: a MIDI file is performed with a known smooth tempo map
(``t -> rate * (t - depth * period / 2 pi * (cos(2 pi t / period + phase) - cos(phase)))``,
the demo recordings' warp with 10-20 % depth instead of 0-3 %), rendered with
another soundfont than the aligner's synthesis, processed and MP3-encoded, so
the true time of every note onset in the rendition is known.  Each rendition
is aligned whole ("full") and as a 30 s excerpt cut at a random offset
("excerpt", the real case of a preview).

Pairs:

* the demo corpus's test songs (``msdmatch demo-data DIR --songs 40
  --distractors 0``), performed with the demo recordings' decisions
  (substituted instruments, dropped and added parts, soundfonts FluidR3 /
  MuseScore, reverb, EQ, compression, noise, MP3 formats);
* real compositions: the MIDI music of Debian's ``freedoom`` and
  ``freedink-data``, rendered with GeneralUser GS 1.47 (``minuet-data``) or
  the OPL3 FM soundfont (``opl3-soundfont``), fetched with ``apt-get
  download`` into ``--cache``.

Error: for every note of the original MIDI whose true onset lies in the
recording and in the span the aligned file covers, ``|aligned onset - true
onset|``.  msdmatch's onsets are read back from the written file with
pretty_midi.  The peer is the librosa gallery's music-synchronisation recipe
(``chroma_cqt`` at hop 1024, ``librosa.sequence.dtw(metric='cosine')``,
``subseq=True`` for excerpts) on the same synthesis and recording, with note
times interpolated along its path; it is scored on the same notes.

An alignment whose median error exceeds 1 s placed the recording on another
part of the MIDI (often a repeat: game music loops); such pairs are listed
under ``misplaced`` and the means (``mean_ms``, ``peer_mean_ms``, ``pairs``)
are over the pairs both aligners placed; ``all_placed_by_ours`` keeps the
peer's misplacements in.

    .venv/bin/python benchmarks/align.py --corpus /tmp/align_corpus --json /tmp/align.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EXCERPT_SECONDS = 30.0
#: An alignment whose median onset error exceeds this found another part of the MIDI.
MISPLACED_S = 1.0
REAL_SOUNDFONTS = ("usr/share/minuet/soundfonts/GeneralUser-v1.47.sf2", "usr/share/sounds/sf2/OPL-3_FM_128M.sf2")
REAL_PACKAGES = ("freedoom", "freedink-data", "minuet-data", "opl3-soundfont")


# ----------------------------------------------------------------------------- ground truth


def warp_params(rng: np.random.Generator) -> dict:
    """A smooth tempo map with 10-20 % drift around a rate of 0.9-1.1."""
    return {"rate": float(rng.uniform(0.9, 1.1)), "depth": float(rng.uniform(0.10, 0.20)),
            "period": float(rng.uniform(20.0, 60.0)), "phase": float(rng.uniform(0, 2 * np.pi))}


def perform(pm, warp: dict, plan: dict | None = None):
    """The whole song performed with the tempo map (and a demo plan's MIDI-level decisions)."""
    import pretty_midi

    from msdmatch.demo.recording import warp_times

    out = pretty_midi.PrettyMIDI(resolution=480)
    rng = np.random.default_rng(0 if plan is None else plan["noise_seed"])
    for i, src in enumerate(pm.instruments):
        if plan is not None and i == plan["drop"]:
            continue
        program = src.program if plan is None else plan["programs"][i]
        inst = pretty_midi.Instrument(program=program, is_drum=src.is_drum)
        notes = [(n.velocity, n.pitch, n.start, n.end) for n in src.notes]
        if plan is not None:
            scale = plan["velocity_scale"][i]
            notes = [(int(np.clip(v * scale + rng.integers(-8, 9), 15, 127)), p, s, e) for v, p, s, e in notes]
            if i == plan["octave_double"]:
                sh = plan["octave_shift"]
                notes += [(max(15, v - 15), p + sh, s, e) for v, p, s, e in notes if 24 <= p + sh <= 108]
        if not notes:
            continue
        st = warp_times(np.array([n[2] for n in notes]), **warp)
        en = warp_times(np.array([n[3] for n in notes]), **warp)
        inst.notes = [pretty_midi.Note(v, p, float(s), float(max(e, s + 0.01)))
                      for (v, p, _, _), s, e in zip(notes, st, en)]
        out.instruments.append(inst)
    return out


def render_recording(perf, *, soundfont: str, fx: dict | None, seed: int, mp3_sr: int, kbps: int) -> np.ndarray:
    """Synthesize, process and round-trip through MP3; mono float32 at 22,050 Hz.

    The MP3 decoder's delay (25-50 ms with lameenc's frames) is measured by
    cross-correlation with the signal before encoding and cut off, so that the
    tempo map gives the onsets in the returned signal to the sample.
    """
    import soundfile as sf

    from msdmatch.demo.recording import apply_effects, encode_mp3
    from msdmatch.io.synth import render

    y = render(perf, sr=22050, soundfont=soundfont, tail=1.0)
    if fx is not None:
        y = apply_effects(y, sr=22050, fx=fx, seed=seed)
    y = y * 0.9 / max(float(np.max(np.abs(y))), 1e-9)
    data = encode_mp3(y, sr=22050, out_sr=mp3_sr, kbps=kbps)
    z, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    z = z.mean(axis=1)
    if sr != 22050:
        import librosa

        z = librosa.resample(z, orig_sr=sr, target_sr=22050, res_type="soxr_hq")
    from scipy.signal import fftconvolve

    n = min(y.size, 20 * 22050)
    c = fftconvolve(z[: n + 4096], y[:n][::-1], mode="valid")
    return z[int(np.argmax(c)):]


def onsets(pm) -> tuple[np.ndarray, np.ndarray]:
    """Onset seconds and ticks of every note of the original MIDI."""
    t = np.array([n.start for inst in pm.instruments for n in inst.notes])
    ticks = np.array([pm.time_to_tick(x) for x in t], np.int64)
    return t, ticks


# ----------------------------------------------------------------------------- the two aligners


def ours(data: bytes, pm, y: np.ndarray, synth: np.ndarray, *, mode: str, ticks: np.ndarray):
    """Aligned onsets of every note (NaN outside the file's span) and the retiming's info."""
    import mido
    import pretty_midi

    from msdmatch.kernels.retime import read_label
    from msdmatch.stages.align.pair import align, retime_to

    a = align(pm, y, 22050, mode=mode, synth=synth)
    out, info = retime_to(mido.MidiFile(file=io.BytesIO(data)), pm, a)
    buf = io.BytesIO()
    out.save(file=buf)
    back = pretty_midi.PrettyMIDI(io.BytesIO(buf.getvalue()))
    label = read_label(mido.MidiFile(file=io.BytesIO(buf.getvalue())))
    t_orig = np.array([pm.tick_to_time(int(k)) for k in ticks])
    inside = (t_orig >= label["midi_start"] - 1e-6) & (t_orig <= label["midi_end"] + 1e-3) if a.excerpt else \
        np.ones(len(ticks), bool)
    n_back = sum(len(i.notes) for i in back.instruments)
    if n_back != int(inside.sum()):
        raise AssertionError(f"aligned file has {n_back} notes, {int(inside.sum())} in its span")
    est = np.full(len(ticks), np.nan)
    est[inside] = [back.tick_to_time(int(k) + label["tick_offset"]) for k in ticks[inside]]
    return est, info, a


def peer(pm, y: np.ndarray, synth: np.ndarray, *, excerpt: bool, t_orig: np.ndarray) -> np.ndarray:
    """The librosa gallery recipe: chroma_cqt (hop 1024) + librosa.sequence.dtw, cosine metric."""
    import librosa

    hop = 1024
    cm = librosa.feature.chroma_cqt(y=synth, sr=22050, hop_length=hop)
    ca = librosa.feature.chroma_cqt(y=y, sr=22050, hop_length=hop)
    if excerpt:
        _, wp = librosa.sequence.dtw(X=ca, Y=cm, metric="cosine", subseq=True)
        wp = wp[:, ::-1]
    else:
        _, wp = librosa.sequence.dtw(X=cm, Y=ca, metric="cosine")
    wp = wp[::-1] * hop / 22050.0  # (midi, audio) seconds, start to end
    mt, idx = np.unique(wp[:, 0], return_index=True)
    at = np.array([wp[wp[:, 0] == m, 1].mean() for m in mt])
    return np.interp(t_orig, mt, at)


# ----------------------------------------------------------------------------- pairs


def demo_pairs(corpus: Path) -> list[dict]:
    """The demo corpus's test songs, each with its recording plan."""
    import csv

    rows = list(csv.DictReader(open(corpus / "split.csv")))
    plans = {}
    for line in open(corpus / "recordings.jsonl"):
        d = json.loads(line)
        plans[d.get("track_id", "")] = d.get("plan")
    out = []
    for r in rows:
        if r["split"] == "test" and r["query_id"]:
            out.append({"name": f"demo:{r['query_id'][:8]}", "midi": str(corpus / "midi" / f"{r['query_id']}.mid"),
                        "plan": plans.get(r["track_id"])})
    return out


def fetch_real(cache: Path) -> Path:
    """Debian packages with the real material, extracted (not installed) under ``cache``."""
    root = cache / "x"
    if (root / "usr/share/games/doom/freedoom2.wad").exists() and all((root / s).exists() for s in REAL_SOUNDFONTS):
        return root
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *REAL_PACKAGES], cwd=cache, check=True, capture_output=True)
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def wad_midis(path: Path) -> list[tuple[str, bytes]]:
    """The MIDI lumps of a Doom WAD (name, bytes)."""
    import struct

    data = path.read_bytes()
    n, off = struct.unpack("<ii", data[4:12])
    out = []
    for k in range(n):
        pos, size, name = struct.unpack("<ii8s", data[off + 16 * k: off + 16 * k + 16])
        lump = data[pos: pos + size]
        if lump[:4] == b"MThd":
            out.append((name.rstrip(b"\0").decode("ascii", "replace"), lump))
    return out


def real_pairs(root: Path, *, n: int, min_seconds: float = 40.0, max_seconds: float = 150.0) -> list[dict]:
    """Up to ``n`` real compositions of 40-150 s, each with a soundfont and an MP3 format."""
    import hashlib

    import pretty_midi

    items, seen = [], set()
    for wad in sorted((root / "usr/share/games/doom").glob("*.wad")):
        items += [(f"freedoom:{wad.stem}:{name}", b) for name, b in wad_midis(wad)]
    items += [(f"freedink:{p.stem}", p.read_bytes()) for p in sorted((root / "usr/share/games/dink").rglob("*.mid"))]
    out = []
    for name, b in items:
        h = hashlib.sha1(b).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        try:
            pm = pretty_midi.PrettyMIDI(io.BytesIO(b))
        except Exception:
            continue
        end = pm.get_end_time()
        if not (min_seconds <= end <= max_seconds) or not any(not i.is_drum and i.notes for i in pm.instruments):
            continue
        k = len(out)
        out.append({"name": name, "bytes": b, "soundfont": str(root / REAL_SOUNDFONTS[k % 2]),
                    "mp3": (44100, 128) if k % 3 else (22050, 64)})
    # spread over both sources: every other freedoom song until n
    return out[:: max(1, len(out) // n)][:n] if len(out) > n else out


# ----------------------------------------------------------------------------- run


def _repeat_similarity(pm, span: tuple[float, float], true_onsets: np.ndarray) -> float:
    """How alike the notes of the span an excerpt was placed on are to those of its true span.

    Jaccard index of the (pitch, quarter second from the span's start) sets: about 1 when the
    excerpt was placed on a repeat of the same music, low when on other music.
    """
    if not true_onsets.size:
        return float("nan")
    t0, t1 = float(true_onsets.min()), float(true_onsets.max())
    notes = [(n.pitch, n.start) for i in pm.instruments for n in i.notes]

    def key(a: float, b: float) -> set:
        return {(p, int((s - a) / 0.25)) for p, s in notes if a <= s <= b}

    a, b = key(t0, t1), key(span[0], span[0] + (t1 - t0))
    return len(a & b) / max(1, len(a | b))


def _stats(err: np.ndarray) -> dict:
    e = err[np.isfinite(err)] * 1e3
    if not e.size:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "notes": 0}
    return {"mean": float(e.mean()), "median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "notes": int(e.size)}


def run_pair(item: dict, *, seed: int) -> list[dict]:
    """Full and excerpt results of one pair."""
    import pretty_midi

    from msdmatch.demo.recording import plan_recording, warp_times
    from msdmatch.io.synth import render

    data = item["bytes"] if "bytes" in item else Path(item["midi"]).read_bytes()
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    rng = np.random.default_rng(seed)
    warp = warp_params(rng)
    plan = item.get("plan")
    if "plan" in item:  # a demo song: the demo recording's decisions
        plan = plan or plan_recording(pm, rng=rng)
        perf = perform(pm, warp, plan)
        y = render_recording(perf, soundfont=plan["soundfont"], fx=plan["fx"], seed=plan["noise_seed"],
                             mp3_sr=plan["mp3_sr"], kbps=plan["mp3_kbps"])
    else:
        fx = plan_recording(pm, rng=rng)["fx"]
        perf = perform(pm, warp)
        y = render_recording(perf, soundfont=item["soundfont"], fx=fx, seed=seed, mp3_sr=item["mp3"][0],
                             kbps=item["mp3"][1])
    t_orig, ticks = onsets(pm)
    truth = warp_times(t_orig, **warp)
    synth = render(pm, sr=22050)  # the aligner's own synthesis (query soundfont), shared with the peer
    results = []
    for kind in ("full", "excerpt"):
        off = 0.0
        yy = y
        if kind == "excerpt":
            off = float(rng.uniform(0, max(0.0, y.size / 22050 - EXCERPT_SECONDS)))
            yy = y[int(off * 22050): int((off + EXCERPT_SECONDS) * 22050)]
        tr = truth - off
        in_rec = (tr >= 0.0) & (tr <= yy.size / 22050 - 0.05)
        t0 = time.perf_counter()
        est, info, a = ours(data, pm, yy, synth, mode=kind, ticks=ticks)
        t1 = time.perf_counter()
        pe = peer(pm, yy, synth, excerpt=kind == "excerpt", t_orig=t_orig)
        t2 = time.perf_counter()
        scored = in_rec & np.isfinite(est)
        e_ours, e_peer = np.abs(est - tr)[scored], np.abs(pe - tr)[scored]
        results.append({
            "pair": item["name"], "kind": kind, "seconds": round(yy.size / 22050, 1),
            "ours": _stats(e_ours), "peer": _stats(e_peer),
            # an excerpt placed on another part of the MIDI (a repeat of the same music, often in game
            # loops) shares no notes with the truth, or has a median error over a second
            "misplaced": {"ours": bool(not e_ours.size or np.median(e_ours) > MISPLACED_S),
                          "peer": bool(not e_peer.size or np.median(e_peer) > MISPLACED_S)},
            "repeat_similarity": _repeat_similarity(pm, a.span, t_orig[in_rec]) if kind == "excerpt" else None,
            "coverage": float(scored.sum() / max(1, in_rec.sum())),
            "tempo_events": info["tempo_events"], "beats": info["beats"],
            "max_tempo_changes_per_beat": info["max_tempo_changes_per_beat"],
            "confidence": a.confidence, "ours_s": t1 - t0, "peer_s": t2 - t1,
            "_err": (e_ours, e_peer),
        })
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="/tmp/align_corpus", help="demo corpus (built if missing)")
    ap.add_argument("--cache", default="/tmp/align_debs", help="where the Debian packages are extracted")
    ap.add_argument("--real", type=int, default=20, help="real-material pairs")
    ap.add_argument("--demo", type=int, default=0, help="demo test songs (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args(argv)

    corpus = Path(args.corpus)
    if not (corpus / "split.csv").exists():
        from msdmatch.demo import build_corpus

        build_corpus(str(corpus), songs=40, distractors=0, seed=0, n_workers=os.cpu_count() or 1)
    items = demo_pairs(corpus)
    if args.demo:
        items = items[: args.demo]
    if args.real:
        items += real_pairs(fetch_real(Path(args.cache)), n=args.real)
    rows = []
    for k, item in enumerate(items):
        try:
            res = run_pair(item, seed=args.seed * 1000 + k)
        except Exception as e:  # report and go on: a pair the aligner refuses counts as a failure
            print(f"{item['name']:<34} FAILED: {type(e).__name__}: {e}", flush=True)
            rows.append({"pair": item["name"], "failed": f"{type(e).__name__}: {e}"})
            continue
        for r in res:
            print(f"{r['pair']:<34} {r['kind']:<8} {r['seconds']:6.1f}s  ours mean {r['ours']['mean']:6.1f} "
                  f"med {r['ours']['median']:5.1f} p95 {r['ours']['p95']:6.1f} ms | peer mean {r['peer']['mean']:7.1f} "
                  f"p95 {r['peer']['p95']:7.1f} ms | cover {r['coverage']:.2f} tempo {r['tempo_events']}/"
                  f"{r['beats']} beats | {r['ours_s']:.1f}s vs {r['peer_s']:.1f}s"
                  f"{'  MISPLACED: ' + ','.join(w for w, v in r['misplaced'].items() if v) if any(r['misplaced'].values()) else ''}",
                  flush=True)
        rows += res
    ok = [r for r in rows if "failed" not in r]
    summary: dict = {"mean_ms": {}, "median_ms": {}, "p95_ms": {}, "peer_mean_ms": {}, "peer_median_ms": {},
                     "peer_p95_ms": {}, "pairs": {}, "ratio_peer_over_ours": {}, "seconds_per_pair": {}}
    summary["misplaced"] = {}
    summary["pairs_run"] = {kind: sum(r["kind"] == kind for r in ok) for kind in ("full", "excerpt")}
    for kind in ("full", "excerpt"):
        every = [r for r in ok if r["kind"] == kind]
        summary["misplaced"][kind] = {w: [r["pair"] for r in every if r["misplaced"][w]] for w in ("ours", "peer")}
        # both aligners scored on the same notes of the pairs that both placed right
        rs = [r for r in every if not (r["misplaced"]["ours"] or r["misplaced"]["peer"])]
        if not rs:
            continue
        # pooled over notes: every note weighs the same, whatever its song
        for key, k in (("", 0), ("peer_", 1)):
            st = _stats(np.concatenate([r["_err"][k] for r in rs]))
            summary[f"{key}mean_ms"][kind] = st["mean"]
            summary[f"{key}median_ms"][kind] = st["median"]
            summary[f"{key}p95_ms"][kind] = st["p95"]
        # and on every pair where msdmatch placed the recording, the peer's misplacements included
        placed = [r for r in every if not r["misplaced"]["ours"]]
        summary.setdefault("all_placed_by_ours", {})[kind] = {
            "pairs": len(placed), "mean_ms": _stats(np.concatenate([r["_err"][0] for r in placed]))["mean"],
            "peer_mean_ms": _stats(np.concatenate([r["_err"][1] for r in placed]))["mean"]}
        summary["pairs"][kind] = len(rs)
        summary["ratio_peer_over_ours"][kind] = summary["peer_mean_ms"][kind] / summary["mean_ms"][kind]
        summary["seconds_per_pair"][kind] = {"ours": float(np.mean([r["ours_s"] for r in rs])),
                                             "peer": float(np.mean([r["peer_s"] for r in rs]))}
    summary["max_tempo_events_per_beat"] = max((r["max_tempo_changes_per_beat"] for r in ok), default=None)
    summary["tempo_events_per_beat"] = float(np.sum([r["tempo_events"] for r in ok]) /
                                             max(1, np.sum([r["beats"] for r in ok])))
    summary["failed_pairs"] = [r for r in rows if "failed" in r]
    summary["rows"] = [{k: v for k, v in r.items() if k != "_err"} for r in rows]
    for kind in summary["pairs"]:
        print(f"{kind:<8} {summary['pairs'][kind]:3d} pairs: msdmatch mean {summary['mean_ms'][kind]:.1f} ms "
              f"(p95 {summary['p95_ms'][kind]:.1f}), peer mean {summary['peer_mean_ms'][kind]:.1f} ms "
              f"(p95 {summary['peer_p95_ms'][kind]:.1f}); peer/msdmatch = {summary['ratio_peer_over_ours'][kind]:.2f}x")
    for kind, m in summary["misplaced"].items():
        print(f"{kind:<8} misplaced (another part of the MIDI): msdmatch {len(m['ours'])}, peer {len(m['peer'])}; "
              f"excluded from the means above")
    rep = [(r["pair"], round(r["repeat_similarity"], 2)) for r in ok if r["kind"] == "excerpt" and r["misplaced"]["ours"]]
    if rep:
        print(f"msdmatch's misplaced excerpts, with the similarity of the notes it chose to the true ones: {rep}")
    print(f"tempo events: at most {summary['max_tempo_events_per_beat']} change per original beat, "
          f"{summary['tempo_events_per_beat']:.3f} events per beat overall; failed pairs: {len(summary['failed_pairs'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
