"""Build the demo corpus: MIDI queries, MP3 previews and the ground truth.

Layout written under ``out_dir``::

    midi/<query_id>.mid     whole songs, the queries (one per query song)
    audio/<track_id>.mp3    30 s previews: one per query song plus distractors, plus
                            duplicate previews of a few query songs (see below)
    truth.csv               query_id,track_id   (a query with a duplicate has two rows)
    split.csv               query_id,track_id,split   (distractors: empty query_id)
    recordings.jsonl        the decisions behind each preview
    corpus.json             seed, counts, soundfonts, versions, seconds

Plan, work and executor are kept apart: :func:`plan_corpus` is a pure
planner returning immutable :class:`SongSpec` items, :func:`make_item`
builds one song and writes its files, and :func:`build_corpus` runs the
items on a Dask bag (the active distributed Client, else local processes).
Every random decision is drawn from ``numpy.random.default_rng((seed, index,
stream))``, so a seed gives byte-identical MIDI and identical previews.

Duplicates: the MSD holds several previews of one recording, so a share
(:data:`DUPLICATE_FRACTION`, drawn from a hash of ``(seed, index)``) of the
query songs get a second preview, ``SongSpec.duplicate``: the same rendition
(same plan: instruments, effects, warp) cut at another offset, or, for songs
too short to move the window or on a coin flip, the preview decoded and
re-encoded at the other bit rate with a gain change.  Both previews are
listed in ``truth.csv``.  Duplicates are extra files drawn from their own
random stream: every other preview is identical to a corpus built without them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from msdmatch.errors import InputError, ParameterError

#: Fraction of songs taken from the music21 corpus; the rest are generated.
MUSIC21_FRACTION = 0.5
#: Split boundaries on a song's hash in [0, 1): train / valid / test = 70/15/15.
_SPLITS = ((0.70, "train"), (0.85, "valid"), (1.0, "test"))
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_STREAM_SONG, _STREAM_RECORDING, _STREAM_DUPLICATE = 0, 1, 2
#: Share of query songs that get a duplicate preview.
DUPLICATE_FRACTION = 0.05
#: Shift of a duplicate's preview window, in seconds (either way).
_DUPLICATE_SHIFT = (4.0, 12.0)


@dataclass(frozen=True)
class SongSpec:
    """One song of the corpus.

    Attributes
    ----------
    index : int
        Position in the corpus; seeds the song's generators with ``seed``.
    seed : int
    track_id : str
        MSD-style id of the preview, ``'TR'`` + 16 uppercase alphanumerics.
    query_id : str
        32 hex digits, or ``''`` for a distractor (no MIDI query).
    split : str
        ``'train'``, ``'valid'`` or ``'test'``.
    work : str
        music21 corpus work key (``path`` or ``path#number``), or ``''`` for a
        generated song.
    duplicate : str
        Track id of a second preview of the same recording, or ``''``.
    """

    index: int
    seed: int
    track_id: str
    query_id: str
    split: str
    work: str
    duplicate: str = ""


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()


def track_id_for(seed: int, index: int, attempt: int = 0) -> str:
    """MSD-style track id derived from ``(seed, index)``: ``'TR'`` + 16 of [A-Z0-9]."""
    d = _digest("track", seed, index, attempt)
    return "TR" + "".join(_ALNUM[b % 36] for b in d)


def _unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2.0**64


def split_for(key: str) -> str:
    """Split of a song, fixed by a hash of its key (70/15/15)."""
    u = _unit("split", key)
    return next(name for bound, name in _SPLITS if u < bound)


def plan_corpus(*, songs: int, distractors: int, seed: int,
                music21_fraction: float = MUSIC21_FRACTION, works=None,
                balanced: bool = False, duplicates: float = DUPLICATE_FRACTION) -> list[SongSpec]:
    """Plan every song of the corpus (pure; O(n) time and memory).

    Parameters
    ----------
    songs : int
        Songs with a MIDI query (each also has a preview).
    distractors : int
        Songs with a preview only.
    seed : int
    music21_fraction : float
        Share of songs drawn from ``works``; when they run out, songs are generated.
    works : sequence of str or None
        music21 work keys to draw from; ``None`` uses
        :func:`msdmatch.demo.songs.music21_catalog` (shuffled by ``seed``).
    balanced : bool
        Draw ``works`` evenly from their collections (a key's first path
        part; round-robin, each in its given or shuffled order) instead of in
        proportion to the collections' sizes; in the catalog
        monophonic folk tunes are three quarters of the works.  Training
        corpora use it so that multi-part works (Bach chorales, Palestrina
        masses), closer to real MIDI transcriptions, are not rare.
    duplicates : float in [0, 1]
        Chance that a query song gets a duplicate preview (decided per song
        by a hash, so the other songs' plans do not depend on it).

    Returns
    -------
    specs : list of SongSpec [length songs + distractors]
    """
    for name, v in (("songs", songs), ("distractors", distractors)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ParameterError(f"{name}={v!r} must be a non-negative integer")
    if songs + distractors == 0:
        raise ParameterError("songs=0 and distractors=0: the corpus would be empty")
    if not 0.0 <= music21_fraction <= 1.0:
        raise ParameterError(f"music21_fraction={music21_fraction!r} must be in [0, 1]")
    if not 0.0 <= duplicates <= 1.0:
        raise ParameterError(f"duplicates={duplicates!r} must be a fraction in [0, 1]")
    n = songs + distractors
    n_m21 = int(round(n * music21_fraction))
    if works is None:
        if n_m21:
            from msdmatch.demo.songs import music21_catalog

            works = [w.key for w in music21_catalog()]
            order = np.random.default_rng((seed, 2**20)).permutation(len(works))
            works = [works[i] for i in order]
        else:
            works = []
    works = (_round_robin(list(works)) if balanced else list(works))[:n_m21]
    # spread music21 songs evenly over queries and distractors
    is_m21 = np.zeros(n, dtype=bool)
    if works:
        is_m21[np.floor(np.arange(len(works)) * (n / len(works))).astype(int)] = True
    specs, seen, w = [], set(), 0
    for i in range(n):
        attempt = 0
        tid = track_id_for(seed, i)
        while tid in seen:
            attempt += 1
            tid = track_id_for(seed, i, attempt)
        seen.add(tid)
        work = ""
        if is_m21[i]:
            work, w = works[w], w + 1
        qid = _digest("query", seed, i).hex() if i < songs else ""
        specs.append(SongSpec(i, int(seed), tid, qid, split_for(work or tid), work))
    # duplicates last, with ids no song has, so that songs' ids do not depend on them
    for i, spec in enumerate(specs[:songs]):
        if _unit("duplicate", seed, i) < duplicates:
            attempt = 0
            while (tid := track_id_for(seed, -1 - i, attempt)) in seen:
                attempt += 1
            seen.add(tid)
            specs[i] = SongSpec(**{**asdict(spec), "duplicate": tid})
    return specs


def _round_robin(works: list[str]) -> list[str]:
    """Interleave work keys by collection (the key's first path part), keeping each one's order."""
    groups: dict[str, list[str]] = {}
    for w in works:
        groups.setdefault(w.split("/", 1)[0], []).append(w)
    from msdmatch.demo.songs import interleave

    return interleave([groups[k] for k in sorted(groups)])


def make_song(spec: SongSpec):
    """The song of a spec as ``pretty_midi.PrettyMIDI`` (music21 work, else generated).

    A music21 work that cannot be parsed falls back to a generated song, so
    the result is still deterministic.
    """
    from msdmatch.demo import songs

    rng = np.random.default_rng((spec.seed, spec.index, _STREAM_SONG))
    if spec.work:
        path, _, num = spec.work.partition("#")
        try:
            return songs.music21_song(songs.Work(path, int(num) if num else None), rng=rng), spec.work
        except InputError:
            pass
    return songs.generated_song(rng=rng), ""


def make_item(spec: SongSpec, *, out_dir: str, style: str = "default", fm_share: float = 0.0) -> dict:
    """Build one song: write its MIDI query (if any) and its MP3 preview.

    Parameters
    ----------
    spec : SongSpec
    out_dir : str
    style : str
        Recording style (:func:`msdmatch.demo.recording.plan_recording`).
    fm_share : float
        Share of previews rendered by the FM engine
        (:func:`msdmatch.demo.recording.make_recording`).

    Returns
    -------
    row : dict
        The spec's fields, ``source`` (the work actually used, ``''`` if
        generated), ``plan`` (recording decisions), ``duplicate_plan`` (how
        the duplicate preview was made, or None), ``seconds`` (wall time)
        and ``error`` (``''`` on success).
    """
    from msdmatch.demo.recording import make_recording

    t0 = time.perf_counter()
    row = asdict(spec)
    try:
        pm, source = make_song(spec)
        row["source"] = source
        if spec.query_id:
            pm.write(os.path.join(out_dir, "midi", spec.query_id + ".mid"))
        rng = np.random.default_rng((spec.seed, spec.index, _STREAM_RECORDING))
        mp3, plan = make_recording(pm, rng=rng, style=style, fm_share=fm_share)
        with open(os.path.join(out_dir, "audio", spec.track_id + ".mp3"), "wb") as fh:
            fh.write(mp3)
        row.update(plan=plan, duplicate_plan=None, error="")
        if spec.duplicate:
            dup, row["duplicate_plan"] = make_duplicate(
                pm, plan, mp3, rng=np.random.default_rng((spec.seed, spec.index, _STREAM_DUPLICATE)))
            with open(os.path.join(out_dir, "audio", spec.duplicate + ".mp3"), "wb") as fh:
                fh.write(dup)
    except InputError as e:
        row.update(source=row.get("source", ""), plan=None, duplicate_plan=None, error=str(e))
    row["seconds"] = time.perf_counter() - t0
    return row


def make_duplicate(pm, plan: dict, mp3: bytes, *, rng: np.random.Generator) -> tuple[bytes, dict]:
    """A second preview of the recording ``plan`` made of ``pm``.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The song.
    plan : dict
        The recording's plan (:func:`msdmatch.demo.recording.plan_recording`).
    mp3 : bytes
        The recording's preview.
    rng : np.random.Generator

    Returns
    -------
    mp3 : bytes
        The duplicate preview.
    how : dict
        ``{'kind': 'offset', 'offset': seconds}`` (same rendition, window moved)
        or ``{'kind': 'reencode', 'kbps': int, 'gain': float}``.
    """
    from msdmatch.demo.recording import PREVIEW_SECONDS, encode_mp3, perform, render_plan

    latest = max(0.0, pm.get_end_time() * plan["warp_rate"] - PREVIEW_SECONDS)
    shift = float(rng.uniform(*_DUPLICATE_SHIFT)) * (1 if rng.random() < 0.5 else -1)
    offset = plan["offset"] + shift
    if not 0.0 <= offset <= latest:
        offset = plan["offset"] - shift
    if rng.random() < 0.5 and 0.0 <= offset <= latest:
        moved = {**plan, "offset": offset}
        perf = perform(pm, moved)
        if any(inst.notes for inst in perf.instruments):
            return render_plan(perf, moved), {"kind": "offset", "offset": offset}
    import io

    import soundfile as sf

    y, sr = sf.read(io.BytesIO(mp3), dtype="float32", always_2d=True)
    gain = float(rng.uniform(0.6, 0.95))
    kbps = 128 if plan["mp3_kbps"] == 64 else 64
    return (encode_mp3(y.mean(axis=1) * gain, sr=int(sr), out_sr=int(sr), kbps=kbps),
            {"kind": "reencode", "kbps": kbps, "gain": gain})


def _make_partition(specs, **kwargs) -> list[dict]:
    return [make_item(s, **kwargs) for s in specs]


def _run(specs: list[SongSpec], *, n_workers: int, progress: bool, **kwargs) -> list[dict]:
    """Build the songs on the active distributed Client, else on a LocalCluster.

    ``kwargs`` (``out_dir``, ``style``, ``fm_share``) go to :func:`make_item`.
    """
    from msdmatch.executor import active_client, using_client

    with using_client(active_client(), n_workers=n_workers, dashboard=False, quiet=True) as c:
        return _run_on(c, specs, progress=progress, **kwargs)


def _run_on(client, specs: list[SongSpec], *, progress: bool, **kwargs) -> list[dict]:
    from msdmatch.executor import run_shards, total_threads

    size = max(1, min(25, -(-len(specs) // (8 * total_threads(client)))))
    parts = [specs[i : i + size] for i in range(0, len(specs), size)]
    rows = run_shards(client, _make_partition, parts, name="demo-data", progress=progress,
                      kwargs=kwargs)
    return [r for part in rows for r in part]


def build_corpus(out_dir, *, songs: int = 400, distractors: int = 1600, seed: int = 0,
                 balanced: bool = False, duplicates: float = DUPLICATE_FRACTION, n_workers: int = 2,
                 progress: bool = True, style: str = "default", fm_share: float = 0.0) -> dict:
    """Build the demo corpus (MIDI queries, MP3 previews, truth and splits).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Created if missing; existing corpus files are overwritten.
    songs : int
        Songs with a MIDI query and a matching preview.
    distractors : int
        Previews of further songs without a query.
    seed : int
    balanced : bool
        Draw music21 works evenly from the collections (see :func:`plan_corpus`).
    duplicates : float
        Share of query songs with a duplicate preview (see :func:`plan_corpus`).
    n_workers : int
        Local worker processes when no distributed Client is active.
    progress : bool
        Show a progress bar.
    style : {'default', 'realistic'}
        Recording style (:func:`msdmatch.demo.recording.plan_recording`);
        ``'realistic'`` for training corpora.  Recorded in ``corpus.json``
        unless default.
    fm_share : float
        Share of previews rendered by the FM engine (:mod:`msdmatch.demo.fm`)
        instead of fluidsynth, for training corpora.  Recorded in
        ``corpus.json`` unless 0.

    Returns
    -------
    summary : dict
        ``queries``, ``previews`` (songs' previews), ``duplicates`` (extra
        previews), ``distractors``, ``music21_songs``,
        ``generated_songs``, ``failures``, ``seconds`` and
        ``seconds_per_preview`` (summed worker time / previews).
    """
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ParameterError(f"n_workers={n_workers!r} must be a positive integer")
    from msdmatch.demo.recording import STYLES

    if style not in STYLES:
        raise ParameterError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if not 0.0 <= fm_share <= 1.0:
        raise ParameterError(f"fm_share={fm_share!r} must be a probability in [0, 1]")
    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "midi").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    specs = plan_corpus(songs=songs, distractors=distractors, seed=seed, balanced=balanced,
                        duplicates=duplicates)
    rows = sorted(_run(specs, out_dir=str(out), n_workers=n_workers, progress=progress, style=style,
                       fm_share=float(fm_share)),
                  key=lambda r: r["index"])
    ok = [r for r in rows if not r["error"]]
    pairs = [(r, t) for r in ok for t in (r["track_id"], r["duplicate"]) if t]  # (row, preview)
    with open(out / "truth.csv", "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id\n")
        fh.writelines(f"{r['query_id']},{t}\n" for r, t in pairs if r["query_id"])
    with open(out / "split.csv", "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id,split\n")
        fh.writelines(f"{r['query_id']},{t},{r['split']}\n" for r, t in pairs)
    with open(out / "recordings.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("track_id", "query_id", "source", "plan", "error")},
                                sort_keys=True) + "\n")
        for r in ok:
            if r["duplicate"]:
                fh.write(json.dumps({"track_id": r["duplicate"], "query_id": r["query_id"],
                                     "source": r["source"], "duplicate_of": r["track_id"],
                                     "plan": r["duplicate_plan"], "error": ""}, sort_keys=True) + "\n")
    work_seconds = float(sum(r["seconds"] for r in rows))
    summary = {
        "queries": sum(1 for r in ok if r["query_id"]),
        "previews": len(ok),
        "duplicates": sum(1 for r in ok if r["duplicate"]),
        "distractors": sum(1 for r in ok if not r["query_id"]),
        "music21_songs": sum(1 for r in ok if r["source"]),
        "generated_songs": sum(1 for r in ok if not r["source"]),
        "failures": len(rows) - len(ok),
        "seconds": time.perf_counter() - t0,
        "seconds_per_preview": work_seconds / max(1, len(rows)),
    }
    meta = {
        "format": 1,
        "seed": int(seed),
        "balanced": bool(balanced),
        "requested": {"songs": int(songs), "distractors": int(distractors)},
        "duplicate_fraction": float(duplicates),
        "counts": {k: summary[k] for k in ("queries", "previews", "duplicates", "distractors",
                                           "music21_songs", "generated_songs", "failures")},
        "soundfonts": {"queries": "TimGM6mb.sf2", "recordings": list(_recording_soundfonts())},
        "preview_seconds": 30.0,
        "versions": _versions(),
    } | ({"style": style} if style != "default" else {}) | ({"fm_share": float(fm_share)} if fm_share else {})
    (out / "corpus.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def time_maps(paths) -> dict:
    """Known alignments of the previews of built corpora, for training.

    Parameters
    ----------
    paths : iterable of str
        ``recordings.jsonl`` files written by :func:`build_corpus`.

    Returns
    -------
    maps : dict of str to callable
        Track id -> function from preview seconds ``(n,)`` to song seconds
        ``(n,)`` (:func:`msdmatch.demo.recording.song_seconds` with the
        preview's plan; a duplicate moved to another offset uses it).  Only
        previews of a song are listed.
    """
    from functools import partial

    from msdmatch.demo.recording import has_time_map, song_seconds

    plans: dict[str, dict] = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        for r in rows:
            if r.get("query_id") and r.get("plan") and not r.get("duplicate_of"):
                plans[r["track_id"]] = r["plan"]
        for r in rows:
            base = plans.get(r.get("duplicate_of") or "")
            if base is not None:
                how = r["plan"] or {}
                plans[r["track_id"]] = {**base, "offset": how["offset"]} if how.get("kind") == "offset" else base
    return {t: partial(song_seconds, p) for t, p in plans.items() if has_time_map(p)}


def _recording_soundfonts() -> tuple[str, ...]:
    from msdmatch.demo.recording import RECORDING_SOUNDFONTS

    return RECORDING_SOUNDFONTS


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("msdmatch", "music21", "pretty_midi", "pyfluidsynth", "lameenc", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
