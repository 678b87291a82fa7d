"""The rendering plan: every random decision of the evaluation set, drawn from a seed.

Pure functions of their inputs: the same pieces, tracks and seed always give
the same plan (plain JSON-serialisable dicts), and the renderer only follows it.

Query renditions
    Each MIDI query gets one "recording": a renderer (adplay's OPL3 FM, or
    fluidsynth with a sound bank that neither the queries nor training use),
    a tempo stretch, humanized timing, sometimes a dropped part (sometimes the
    melody), an octave doubling, loud drums, an omitted span inside the
    preview, then EQ, reverb, noise, gain and an MP3 format, and a 30 s
    preview window at a random offset inside the piece.

Distractors
    Produced music cut into 30 s previews at spread offsets, several per track,
    with a light EQ and gain and the same MP3 formats.
"""
from __future__ import annotations

import math

import numpy as np

#: Preview length in seconds.
PREVIEW_SECONDS = 30.0
#: Renderers of the query recordings: adplay (OPL3 FM) and four sound banks for fluidsynth.
RENDERERS = ("adplay-nuked", "GeneralUser-v1.47.sf2", "OPL-3_FM_128M.sf2", "sf_GMbank.sf2", "A320U.sf2")
#: MP3 formats (sample rate, kbit/s) of every preview.
MP3_RATES = (22050, 44100)
MP3_KBPS = (64, 96, 128, 192)
#: Fewest non-drum note onsets a preview window must hold (when the piece has such a window).
MIN_WINDOW_NOTES = 20


def _mp3(rng: np.random.Generator) -> dict:
    return {"mp3_sr": int(rng.choice(MP3_RATES)), "mp3_kbps": int(rng.choice(MP3_KBPS))}


def _window(info: dict, length: float, rng: np.random.Generator) -> float:
    """Score-time start of a window of ``length`` s with enough notes, drawn uniformly."""
    end = float(info["seconds"])
    if end <= length:
        return 0.0
    dens = np.asarray(info["density"], dtype=np.int64)
    last = int(math.floor(end - length))
    w = int(math.ceil(length))
    csum = np.concatenate([[0], np.cumsum(dens)])
    starts = np.arange(last + 1)
    busy = csum[np.minimum(starts + w, dens.size)] - csum[starts] >= MIN_WINDOW_NOTES
    ok = starts[busy] if busy.any() else starts
    s = float(rng.choice(ok)) + float(rng.uniform(0, 1))
    return min(s, end - length)


def plan_query(info: dict, *, renderer: str, rng: np.random.Generator) -> dict:
    """Decisions for one query's recording.

    Parameters
    ----------
    info : dict
        :func:`midi.describe` of the piece, plus ``query_id``.
    renderer : str
        One of :data:`RENDERERS`.
    rng : np.random.Generator

    Returns
    -------
    plan : dict
        ``drop``/``drop_is_melody`` (-1: no part dropped), ``double`` and
        ``double_shift`` (octave doubling), ``stretch`` (performed time per
        score second), ``humanize_s`` (onset jitter s.d.), ``drum_gain``,
        ``skip_at``/``skip_len`` (score seconds omitted, 0 for none),
        ``score_offset`` and ``offset`` (preview start in score and performed
        seconds), ``fx`` and the MP3 format, and ``seed`` (noise, jitter).
    """
    parts = info["parts"]
    melodic = [i for i, p in enumerate(parts) if not p["is_drum"] and p["notes"]]
    has_drums = any(p["is_drum"] and p["notes"] for p in parts)
    drop = -1
    if len(melodic) >= 2 and rng.random() < 0.4:
        others = [i for i in melodic if i != info["melody"]]
        drop = info["melody"] if rng.random() < 0.5 or not others else int(rng.choice(others))
    double = int(rng.choice(melodic)) if melodic and rng.random() < 0.25 else -1
    stretch = float(rng.uniform(0.97, 1.03))
    skip_len = float(rng.uniform(3, 10)) if rng.random() < 0.25 else 0.0
    skip_at = float(rng.uniform(5, 20)) if skip_len else 0.0
    score_len = PREVIEW_SECONDS / stretch + skip_len
    score_offset = _window(info, score_len, rng)
    fx = {
        "highpass": float(rng.uniform(30, 300)),
        "lowpass": float(rng.uniform(3000, 9000)) if rng.random() < 0.5 else 0.0,
        "reverb": bool(rng.random() < 0.6),
        "rt": float(rng.uniform(0.3, 1.5)),
        "wet": float(rng.uniform(0.1, 0.35)),
        "snr_db": float(rng.uniform(20, 45)),
        "gain_db": float(rng.uniform(-12, 0)),
    }
    return {
        "query_id": info["query_id"],
        "renderer": renderer,
        "drop": drop,
        "drop_is_melody": bool(drop >= 0 and drop == info["melody"]),
        "double": double,
        "double_shift": int(rng.choice((-12, 12))),
        "stretch": stretch,
        "humanize_s": float(rng.uniform(0.005, 0.03)),
        "velocity_jitter": int(rng.integers(0, 13)),
        "drum_gain": float(rng.uniform(1.3, 1.8)) if has_drums and rng.random() < 0.35 else 1.0,
        "skip_at": skip_at,
        "skip_len": skip_len,
        "score_offset": score_offset,
        "offset": score_offset * stretch,
        "fx": fx,
        **_mp3(rng),
        "seed": int(rng.integers(2**31)),
    }


def plan_queries(infos: list[dict], *, seed: int = 0) -> list[dict]:
    """One recording plan per query; renderers are balanced over the queries.

    Parameters
    ----------
    infos : list of dict
        :func:`midi.describe` of each piece plus its ``query_id``, in a fixed order.
    seed : int

    Returns
    -------
    plans : list of dict, one per info, see :func:`plan_query`
    """
    order = np.random.default_rng([seed, 0]).permutation(len(infos))
    renderer = [RENDERERS[int(j) % len(RENDERERS)] for j in np.argsort(order)]
    return [plan_query(info, renderer=renderer[i], rng=np.random.default_rng([seed, 1, i]))
            for i, info in enumerate(infos)]


def plan_distractors(tracks: list[tuple[str, float]], *, seed: int = 0, target: int = 1100) -> list[dict]:
    """Previews cut from produced music, at least ``target`` of them when the music allows.

    Parameters
    ----------
    tracks : list of (source, seconds)
        Tracks of at least :data:`PREVIEW_SECONDS`, in a fixed order.
    seed : int
    target : int
        Previews wanted; each track gives a share proportional to its length
        (at least one), spread over the track with jittered offsets.

    Returns
    -------
    plans : list of dict
        ``source``, ``offset`` (seconds), ``fx`` (``highpass``, ``lowpass``,
        ``gain_db``) and the MP3 format.
    """
    spans = np.array([max(0.0, s - PREVIEW_SECONDS) for _, s in tracks])
    total = float(spans.sum()) + len(tracks)
    out = []
    for i, (src, _) in enumerate(tracks):
        rng = np.random.default_rng([seed, 2, i])
        n = max(1, math.ceil(target * (spans[i] + 1) / total))
        for k in range(n):
            off = spans[i] * (k + float(rng.uniform(0.1, 0.9))) / n
            out.append({"source": src, "offset": float(off),
                        "fx": {"highpass": float(rng.uniform(20, 120)),
                               "lowpass": float(rng.uniform(5000, 10000)) if rng.random() < 0.3 else 0.0,
                               "gain_db": float(rng.uniform(-9, 0))},
                        **_mp3(rng)})
    return out


def assign_ids(n: int, *, seed: int = 0) -> list[str]:
    """Opaque preview ids ``RW00000``..., shuffled so that an id says nothing of its source."""
    perm = np.random.default_rng([seed, 3]).permutation(n)
    return [f"RW{int(p):05d}" for p in perm]
