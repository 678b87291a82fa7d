"""Turn a song into a 30 s "recording" preview that differs from its MIDI.

The pipeline per song is pure up to the MP3 bytes:

1. :func:`plan_recording` draws every decision (soundfont, instrument
   substitutions, dropped/added parts, dynamics, octave doubling, time warp,
   effects, MP3 format, preview offset) from a generator into a plain dict.
2. :func:`perform` applies the MIDI-level decisions and crops the warped
   performance to the preview window (times in seconds, window starts at 0).
3. :func:`render_window` synthesizes it in one pass with fluidsynth (float
   output, reverb and chorus off, so the result does not depend on what the
   process rendered before), or, for a share of the previews
   (``fm_share``), :func:`msdmatch.demo.fm.render_fm` with FM patches.
4. :func:`apply_effects` adds reverb, EQ, compression, noise and gain.
5. :func:`encode_mp3` writes MP3 bytes with lameenc.

Audio arrays are mono float32 ``(n_samples,)``; rendering is at 22,050 Hz
and upsampled when the MP3 is 44.1 kHz.

Two styles (``style=``): ``'default'`` (the demo corpus; note-for-note the
query with other instruments) and ``'realistic'`` (for training corpora; see
:func:`plan_realistic`): parts dropped, the melody too, instruments
substituted, sections repeated or omitted and the intro cut before the
window is cut, per-note timing jitter, loud drums, a wider tempo range and
stronger effects.  Default plans carry no ``style`` key, so the demo corpus
is byte-identical to one built before styles existed.
"""
from __future__ import annotations

import copy

import numpy as np

from msdmatch.errors import InputError, ParameterError

#: Soundfonts used for recordings (never TimGM6mb, which renders queries).
RECORDING_SOUNDFONTS = ("FluidR3_GM.sf2", "MuseScore_General_Lite.sf3")
#: Preview length in seconds.
PREVIEW_SECONDS = 30.0
#: Rate the recordings are synthesized at.
RENDER_SR = 22050

#: Recording styles: the demo corpus's and the harder one for training corpora.
STYLES = ("default", "realistic")
#: Stream (with the plan's noise seed) that draws the engine when ``fm_share > 0``.
_STREAM_ENGINE = 1

_EXTRA_LEADS = (40, 56, 65, 71, 73, 80, 81, 24, 11, 61)


def plan_recording(pm, *, rng: np.random.Generator, style: str = "default") -> dict:
    """Draw the decisions that make a recording differ from its transcription.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The song (the MIDI query).
    rng : np.random.Generator
    style : {'default', 'realistic'}
        ``'realistic'`` draws with :func:`plan_realistic`.

    Returns
    -------
    plan : dict
        JSON-serialisable decisions; see the module docstring.
    """
    if style not in STYLES:
        raise ParameterError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if style == "realistic":
        return plan_realistic(pm, rng=rng)
    n = len(pm.instruments)
    melodic = [i for i, inst in enumerate(pm.instruments) if not inst.is_drum]
    programs = []
    for inst in pm.instruments:
        p = int(inst.program)
        if not inst.is_drum:
            u = rng.random()
            if u < 0.5:  # another instrument of the same GM family
                p = (p // 8) * 8 + int((p % 8 + rng.integers(1, 8)) % 8)
            elif u < 0.7:  # another family
                p = int((p + 8 * rng.integers(1, 12)) % 112)
        programs.append(p)
    drop = int(rng.choice(melodic[1:])) if len(melodic) >= 3 and rng.random() < 0.35 else -1
    warp_rate = float(rng.uniform(0.93, 1.07))
    if abs(warp_rate - 1.0) < 0.02:
        warp_rate += 0.03 if warp_rate >= 1.0 else -0.03
    end = pm.get_end_time() * warp_rate
    fx = {
        "reverb": bool(rng.random() < 0.75),
        "rt": float(rng.uniform(0.15, 0.8)),
        "wet": float(rng.uniform(0.1, 0.4)),
        "highpass": float(rng.uniform(40, 250)),
        "lowpass": float(rng.uniform(3500, 10000)) if rng.random() < 0.6 else 0.0,
        "compress": bool(rng.random() < 0.6),
        "ratio": float(rng.uniform(2, 6)),
        "snr_db": float(rng.uniform(25, 50)),
        "peak": float(rng.uniform(0.5, 0.98)),
    }
    return {
        "soundfont": RECORDING_SOUNDFONTS[int(rng.integers(len(RECORDING_SOUNDFONTS)))],
        "programs": programs,
        "drop": drop,
        "extra_lead": int(rng.choice(_EXTRA_LEADS)) if melodic and rng.random() < 0.25 else -1,
        "extra_percussion": bool(rng.random() < (0.5 if all(not i.is_drum for i in pm.instruments) else 0.15)),
        "velocity_scale": [float(rng.uniform(0.6, 1.25)) for _ in range(n)],
        "octave_double": int(rng.choice(melodic)) if melodic and rng.random() < 0.35 else -1,
        "octave_shift": int(rng.choice((-12, 12))),
        "warp_rate": warp_rate,
        "warp_depth": float(rng.uniform(0.0, 0.03)),
        "warp_period": float(rng.uniform(15, 60)),
        "warp_phase": float(rng.uniform(0, 2 * np.pi)),
        "offset": float(rng.uniform(0, max(0.0, end - PREVIEW_SECONDS))),
        "fx": fx,
        "mp3_sr": 22050 if rng.random() < 0.6 else 44100,
        "mp3_kbps": 64 if rng.random() < 0.5 else 128,
        "noise_seed": int(rng.integers(2**31)),
    }


#: Soundfonts of the realistic style (never TimGM6mb, nor the evaluation set's banks).
REALISTIC_SOUNDFONTS = RECORDING_SOUNDFONTS


def melody_part(pm) -> int:
    """Index of the melody: the non-drum part with notes and the highest mean pitch, or -1."""
    best, best_pitch = -1, -np.inf
    for i, inst in enumerate(pm.instruments):
        if not inst.is_drum and inst.notes:
            mean = float(np.mean([n.pitch for n in inst.notes]))
            if mean > best_pitch:
                best, best_pitch = i, mean
    return best


def plan_sections(pm, *, rng: np.random.Generator) -> list[list[float]]:
    """Draw a structure change: the song's sections, some cut, omitted or repeated.

    Sections are 4 or 8 bars long (downbeats; 8 s blocks if the song has no
    usable downbeats).  With three sections or more: the intro (first
    section) is cut with probability 0.35, a middle section omitted with 0.3,
    and a section played twice with 0.4.

    Returns
    -------
    segments : list of [start, end]
        Spans of the song in seconds, played one after another.
    """
    end = float(pm.get_end_time())
    bars = int(rng.choice([4, 8]))
    try:
        down = np.asarray(pm.get_downbeats(), dtype=float)
    except Exception:  # pretty_midi raises plain errors on odd meters
        down = np.zeros(0)
    bounds = down[::bars] if down.size >= 2 * bars else np.arange(0.0, end, 8.0)
    bounds = [0.0] + [float(b) for b in bounds if 1.0 < b < end - 1.0] + [end]
    sections = [[a, b] for a, b in zip(bounds[:-1], bounds[1:])]
    cut, omit, repeat = rng.random() < 0.35, rng.random() < 0.3, rng.random() < 0.4
    pick_omit, pick_repeat = rng.random(), rng.random()
    if len(sections) < 3:
        return sections
    if cut:
        sections = sections[1:]
    if omit and len(sections) >= 3:
        del sections[1 + int(pick_omit * (len(sections) - 2))]
    if repeat:
        i = int(pick_repeat * len(sections))
        sections.insert(i + 1, list(sections[i]))
    return sections


def plan_realistic(pm, *, rng: np.random.Generator) -> dict:
    """Draw a harder recording than the default style's (for training corpora).

    Beyond the default decisions, with wider ranges: several parts dropped,
    the melody (:func:`melody_part`) with probability 0.3 when another
    melodic part remains; a structure change (:func:`plan_sections`);
    per-note timing jitter (``jitter`` seconds, standard deviation); loud
    drums (``drum_boost``: drums up, the rest down); soft clipping
    (``fx['drive']``).  The window offset is drawn over the restructured,
    warped performance.

    Returns
    -------
    plan : dict
        As :func:`plan_recording`'s, with ``style='realistic'``, ``drops``
        (list of part indices, instead of ``drop``), ``segments``,
        ``jitter`` and ``drum_boost``.
    """
    n = len(pm.instruments)
    melodic = [i for i, inst in enumerate(pm.instruments) if not inst.is_drum and inst.notes]
    programs = []
    for inst in pm.instruments:
        p = int(inst.program)
        if not inst.is_drum:
            u = rng.random()
            if u < 0.4:
                p = (p // 8) * 8 + int((p % 8 + rng.integers(1, 8)) % 8)
            elif u < 0.75:
                p = int((p + 8 * rng.integers(1, 14)) % 112)
        programs.append(p)
    melody = melody_part(pm)
    drops = []
    if len(melodic) >= 2:
        if rng.random() < 0.3:
            drops.append(melody)
        for i in melodic:
            if i != melody and rng.random() < 0.2:
                drops.append(i)
        if len(drops) >= len(melodic):  # keep one melodic part
            drops = drops[:-1]
    for i, inst in enumerate(pm.instruments):
        if inst.is_drum and rng.random() < 0.1:
            drops.append(i)
    segments = plan_sections(pm, rng=rng)
    warp_rate = float(rng.uniform(0.85, 1.15))
    if abs(warp_rate - 1.0) < 0.02:
        warp_rate += 0.03 if warp_rate >= 1.0 else -0.03
    end = sum(b - a for a, b in segments) * warp_rate
    has_drums = any(i.is_drum for i in pm.instruments)
    fx = {
        "reverb": bool(rng.random() < 0.85),
        "rt": float(rng.uniform(0.2, 1.6)),
        "wet": float(rng.uniform(0.1, 0.5)),
        "highpass": float(rng.uniform(40, 400)),
        "lowpass": float(rng.uniform(2000, 9000)) if rng.random() < 0.7 else 0.0,
        "compress": bool(rng.random() < 0.75),
        "ratio": float(rng.uniform(2, 8)),
        "snr_db": float(rng.uniform(12, 40)),
        "peak": float(rng.uniform(0.4, 0.98)),
        "drive": float(rng.uniform(1.5, 6.0)) if rng.random() < 0.3 else 0.0,
    }
    return {
        "style": "realistic",
        "soundfont": REALISTIC_SOUNDFONTS[int(rng.integers(len(REALISTIC_SOUNDFONTS)))],
        "programs": programs,
        "drops": [int(i) for i in sorted(set(drops))],
        "segments": segments,
        "jitter": float(rng.uniform(0.005, 0.035)),
        "drum_boost": bool(rng.random() < 0.5),
        "extra_lead": int(rng.choice(_EXTRA_LEADS)) if melodic and rng.random() < 0.25 else -1,
        "extra_percussion": bool(rng.random() < (0.6 if not has_drums else 0.25)),
        "velocity_scale": [float(rng.uniform(0.5, 1.3)) for _ in range(n)],
        "octave_double": int(rng.choice(melodic)) if melodic and rng.random() < 0.4 else -1,
        "octave_shift": int(rng.choice((-12, 12))),
        "warp_rate": warp_rate,
        "warp_depth": float(rng.uniform(0.0, 0.06)),
        "warp_period": float(rng.uniform(10, 60)),
        "warp_phase": float(rng.uniform(0, 2 * np.pi)),
        "offset": float(rng.uniform(0, max(0.0, end - PREVIEW_SECONDS))),
        "fx": fx,
        "mp3_sr": 22050 if rng.random() < 0.6 else 44100,
        "mp3_kbps": int(rng.choice((64, 96, 128))),
        "noise_seed": int(rng.integers(2**31)),
    }


def restructure(notes: list, segments: list, *, jitter: float, rng: np.random.Generator) -> list:
    """Play ``segments`` of a part one after another, with per-note timing jitter.

    Parameters
    ----------
    notes : list of pretty_midi.Note
        One part, times in seconds of the song.
    segments : list of [start, end]
        Spans of the song (see :func:`plan_sections`).  A note belongs to the
        span its onset falls in and is cut at the span's end.
    jitter : float
        Standard deviation in seconds of a normal shift of each note.
    rng : np.random.Generator

    Returns
    -------
    notes : list of pretty_midi.Note
        New notes in performance time (>= 0), in segment order.
    """
    import pretty_midi

    if not notes:
        return []
    start = np.array([n.start for n in notes])
    end = np.array([n.end for n in notes])
    out, cursor = [], 0.0
    for a, b in segments:
        for k in np.flatnonzero((start >= a) & (start < b)):
            shift = float(rng.normal(0.0, jitter)) if jitter > 0 else 0.0
            s = max(0.0, cursor + start[k] - a + shift)
            e = max(s + 0.02, cursor + min(end[k], b) - a + shift)
            out.append(pretty_midi.Note(notes[k].velocity, notes[k].pitch, s, e))
        cursor += b - a
    return out


def _realistic_parts(pm, plan: dict) -> list:
    """The realistic style's performed instruments (restructured, unwarped)."""
    import pretty_midi

    rng = np.random.default_rng(plan["noise_seed"])
    boost = plan["drum_boost"]
    melody = melody_part(pm)
    insts = []
    for i, src in enumerate(pm.instruments):
        if i in plan["drops"]:
            continue
        inst = pretty_midi.Instrument(program=plan["programs"][i], is_drum=src.is_drum)
        scale = plan["velocity_scale"][i] * ((1.6 if src.is_drum else 0.7) if boost else 1.0)
        for n in restructure(src.notes, plan["segments"], jitter=plan["jitter"], rng=rng):
            n.velocity = int(np.clip(n.velocity * scale + rng.integers(-12, 13), 15, 127))
            inst.notes.append(n)
        if i == plan["octave_double"]:
            sh = plan["octave_shift"]
            inst.notes.extend(
                pretty_midi.Note(max(15, n.velocity - 15), n.pitch + sh, n.start, n.end)
                for n in list(inst.notes) if 24 <= n.pitch + sh <= 108
            )
        insts.append(inst)
    if plan["extra_lead"] >= 0 and melody >= 0 and melody not in plan["drops"]:
        lead = pretty_midi.Instrument(program=plan["extra_lead"])
        for n in restructure(pm.instruments[melody].notes, plan["segments"], jitter=plan["jitter"], rng=rng):
            if n.pitch + 12 <= 108:
                lead.notes.append(pretty_midi.Note(max(20, n.velocity - 20), n.pitch + 12, n.start, n.end))
        insts.append(lead)
    if plan["extra_percussion"]:
        beats = pm.get_beats()
        perc = pretty_midi.Instrument(program=0, is_drum=True)
        vel = 110 if boost else 75
        hits = [pretty_midi.Note(vel if k % 2 else vel - 15, 38 if k % 4 else 36, b, b + 0.1)
                for k, b in enumerate(beats)]
        perc.notes = restructure(hits, plan["segments"], jitter=0.0, rng=rng)
        insts.append(perc)
    return insts


def warp_times(t: np.ndarray, *, rate: float, depth: float, period: float, phase: float) -> np.ndarray:
    """Smooth monotonic time warp: local tempo ``rate * (1 + depth*sin(...))``.

    Parameters
    ----------
    t : np.ndarray [shape=(n,)]
        Times in seconds.

    Returns
    -------
    t_warped : np.ndarray [shape=(n,)]
        ``rate * (t - depth*period/(2*pi) * (cos(2*pi*t/period + phase) - cos(phase)))``;
        monotonic since ``depth < 1``.
    """
    w = 2 * np.pi / period
    return rate * (t - depth / w * (np.cos(w * t + phase) - np.cos(phase)))


def _warp(plan: dict) -> dict:
    """The plan's :func:`warp_times` keyword arguments."""
    return {k: plan["warp_" + k] for k in ("rate", "depth", "period", "phase")}


def has_time_map(plan: dict) -> bool:
    """Whether :func:`song_seconds` can map the plan's preview onto its song."""
    return "warp_rate" in plan


def song_seconds(plan: dict, seconds: np.ndarray) -> np.ndarray | None:
    """Where in the song each time of a preview lies.

    The plan's time warp is smooth and monotonic, so a preview made by
    :func:`perform` has a known alignment to its MIDI file: preview time
    ``s`` is warped performance time ``s + offset``.  A realistic plan's
    performance plays the song's ``segments`` one after another, so its map
    is piecewise (backwards where a section repeats); its per-note jitter
    (at most a few tens of milliseconds) is not in the map.

    Parameters
    ----------
    plan : dict
        From :func:`plan_recording`.
    seconds : np.ndarray [shape=(n,)]
        Times in the preview, from its start.

    Returns
    -------
    song : np.ndarray [shape=(n,), dtype=float64] or None
        Song times in seconds (the warp inverted on a 10 ms grid); None for a
        plan without a time warp.
    """
    if not has_time_map(plan):
        return None
    kw = _warp(plan)
    warped = np.asarray(seconds, dtype=np.float64) + plan["offset"]
    # the local tempo is at least rate * (1 - depth), which bounds the performance time
    last = float(warped.max(initial=0.0)) / (kw["rate"] * (1.0 - kw["depth"])) + 1.0
    grid = np.arange(0.0, last + 0.01, 0.01)
    played = np.interp(warped, warp_times(grid, **kw), grid)
    if "segments" not in plan:
        return played
    seg = np.asarray(plan["segments"], dtype=np.float64).reshape(-1, 2)
    starts = np.concatenate([[0.0], np.cumsum(seg[:, 1] - seg[:, 0])[:-1]])
    k = np.clip(np.searchsorted(starts, played, side="right") - 1, 0, len(seg) - 1)
    return seg[k, 0] + played - starts[k]


def perform(pm, plan: dict):
    """Apply a plan's MIDI-level decisions and crop to the preview window.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The song; not modified.
    plan : dict
        From :func:`plan_recording`.

    Returns
    -------
    perf : pretty_midi.PrettyMIDI
        Notes of the window only, in seconds from the window start.
    """
    insts = _realistic_parts(pm, plan) if plan.get("style") == "realistic" else _default_parts(pm, plan)
    return _window(insts, plan)


def _default_parts(pm, plan: dict) -> list:
    """The default style's performed instruments (whole song, unwarped)."""
    import pretty_midi

    rng = np.random.default_rng(plan["noise_seed"])
    insts = []
    for i, src in enumerate(pm.instruments):
        if i == plan["drop"]:
            continue
        inst = pretty_midi.Instrument(program=plan["programs"][i], is_drum=src.is_drum)
        scale = plan["velocity_scale"][i]
        for n in src.notes:
            inst.notes.append(pretty_midi.Note(int(np.clip(n.velocity * scale + rng.integers(-8, 9), 15, 127)),
                                               n.pitch, n.start, n.end))
        if i == plan["octave_double"]:
            sh = plan["octave_shift"]
            inst.notes.extend(
                pretty_midi.Note(max(15, n.velocity - 15), n.pitch + sh, n.start, n.end)
                for n in list(inst.notes) if 24 <= n.pitch + sh <= 108
            )
        insts.append(inst)
    melodic = [x for x in pm.instruments if not x.is_drum and x.notes]
    if plan["extra_lead"] >= 0 and melodic:
        top = max(melodic, key=lambda x: np.mean([n.pitch for n in x.notes]))
        lead = pretty_midi.Instrument(program=plan["extra_lead"])
        lead.notes = [copy.copy(n) for n in top.notes if n.pitch + 12 <= 108]
        for n in lead.notes:
            n.pitch += 12
            n.velocity = max(20, n.velocity - 20)
        insts.append(lead)
    if plan["extra_percussion"]:
        beats = pm.get_beats()
        perc = pretty_midi.Instrument(program=0, is_drum=True)
        for k, b in enumerate(beats):
            perc.notes.append(pretty_midi.Note(70 if k % 2 else 55, 70 if k % 4 else 39, b, b + 0.1))
        insts.append(perc)
    return insts


def _window(insts: list, plan: dict):
    """Warp the performed instruments and crop them to the preview window."""
    import pretty_midi

    t0 = plan["offset"]
    t1 = t0 + PREVIEW_SECONDS
    kw = _warp(plan)
    out = pretty_midi.PrettyMIDI(resolution=480)
    for inst in insts:
        if not inst.notes:
            continue
        starts = warp_times(np.array([n.start for n in inst.notes]), **kw)
        ends = warp_times(np.array([n.end for n in inst.notes]), **kw)
        keep = (ends > t0) & (starts < t1)
        new = pretty_midi.Instrument(program=inst.program, is_drum=inst.is_drum)
        for n, s, e in zip(np.array(inst.notes, dtype=object)[keep], starts[keep], ends[keep]):
            new.notes.append(pretty_midi.Note(n.velocity, n.pitch, max(0.0, s - t0), min(e, t1) - t0))
        if new.notes:
            out.instruments.append(new)
    return out


def render_window(perf, *, soundfont: str, sr: int = RENDER_SR,
                  seconds: float = PREVIEW_SECONDS) -> np.ndarray:
    """Synthesize a cropped performance with :func:`msdmatch.io.synth.render`.

    Parameters
    ----------
    perf : pretty_midi.PrettyMIDI
    soundfont : str
        Name or path, see :func:`msdmatch.io.synth.resolve_soundfont`.
    sr : int
    seconds : float
        Output length.

    Returns
    -------
    y : np.ndarray [shape=(round(seconds*sr),), dtype=float32]
        Peak 1, or all zeros if the window holds no notes.
    """
    from msdmatch.io.synth import render

    n_out = int(round(seconds * sr))
    out = np.zeros(n_out, dtype=np.float32)
    if not any(inst.notes for inst in perf.instruments):
        return out
    y = render(perf, sr=sr, soundfont=soundfont, tail=0.0)
    out[: min(n_out, y.size)] = y[:n_out]
    return out


def apply_effects(y: np.ndarray, *, sr: int, fx: dict, seed: int) -> np.ndarray:
    """Reverb, EQ, compression, noise and gain, as drawn by :func:`plan_recording`.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
    sr : int
    fx : dict
        ``plan["fx"]``.
    seed : int
        Seeds the impulse response and the noise.

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        Peak ``fx["peak"]`` (unless silent).
    """
    from scipy import signal

    rng = np.random.default_rng(seed)
    y = y.astype(np.float64)
    if fx.get("drive", 0.0) > 0:  # soft clipping (realistic style only)
        peak = float(np.max(np.abs(y)))
        if peak > 0:
            y = np.tanh(fx["drive"] * y / peak) / np.tanh(fx["drive"])
    if fx["reverb"]:
        n_ir = int(fx["rt"] * sr)
        t = np.arange(n_ir) / sr
        ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / fx["rt"])
        ir /= np.sqrt(np.sum(ir**2))
        wet = signal.fftconvolve(y, ir)[: y.size]
        y = (1 - fx["wet"]) * y + fx["wet"] * wet
    sos = signal.butter(2, fx["highpass"], btype="highpass", fs=sr, output="sos")
    y = signal.sosfilt(sos, y)
    if fx["lowpass"] and fx["lowpass"] < sr / 2 - 100:
        y = signal.sosfilt(signal.butter(4, fx["lowpass"], fs=sr, output="sos"), y)
    if fx["compress"]:
        block = 256
        nb = int(np.ceil(y.size / block))
        env = np.sqrt(np.mean(np.pad(y, (0, nb * block - y.size)).reshape(nb, block) ** 2, axis=1))
        env = signal.lfilter([0.3], [1, -0.7], env)
        thr = 0.3 * float(np.max(env)) if np.max(env) > 0 else 1.0
        gain = np.where(env > thr, (np.maximum(env, 1e-12) / thr) ** (1 / fx["ratio"] - 1), 1.0)
        y = y * np.interp(np.arange(y.size), np.arange(nb) * block + block / 2, gain)
    rms = float(np.sqrt(np.mean(y**2)))
    if rms > 0:
        y = y + rng.standard_normal(y.size) * rms * 10 ** (-fx["snr_db"] / 20)
    fade = np.ones(y.size)
    nf_in, nf_out = min(y.size, int(0.05 * sr)), min(y.size, int(1.0 * sr))
    fade[:nf_in] = np.linspace(0, 1, nf_in)
    fade[y.size - nf_out:] *= np.linspace(1, 0, nf_out)
    y = y * fade
    peak = float(np.max(np.abs(y)))
    if peak > 0:
        y *= fx["peak"] / peak
    return y.astype(np.float32)


def encode_mp3(y: np.ndarray, *, sr: int, out_sr: int, kbps: int) -> bytes:
    """Encode mono audio as MP3 bytes with lameenc.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
        In [-1, 1], at ``sr``.
    sr : int
        Rate of ``y``.
    out_sr : int
        MP3 sample rate (22,050 or 44,100; an integer multiple of ``sr``).
    kbps : int
        Constant bit rate.
    """
    import lameenc

    if out_sr != sr:
        from scipy import signal

        if out_sr % sr:
            raise InputError(f"out_sr={out_sr} must be a multiple of sr={sr}")
        y = signal.resample_poly(y, out_sr // sr, 1).astype(np.float32)
    pcm = (np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
    enc = lameenc.Encoder()
    enc.set_bit_rate(int(kbps))
    enc.set_in_sample_rate(int(out_sr))
    enc.set_channels(1)
    enc.set_quality(7)
    return bytes(enc.encode(pcm.tobytes()) + enc.flush())


def make_recording(pm, *, rng: np.random.Generator, style: str = "default",
                   fm_share: float = 0.0) -> tuple[bytes, dict]:
    """Plan, perform, render, process and encode one preview.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The song.
    rng : np.random.Generator
    style : {'default', 'realistic'}
        See :func:`plan_recording`.
    fm_share : float
        Probability that the preview is rendered by the FM engine
        (:mod:`msdmatch.demo.fm`) instead of fluidsynth.  Drawn from its own
        stream of the plan's noise seed, so the rest of the plan, and every
        preview when ``fm_share == 0``, is as without it.

    Returns
    -------
    mp3 : bytes
    plan : dict
        The decisions, see :func:`plan_recording`.

    Raises
    ------
    InputError
        If the preview window holds no notes.
    """
    plan = plan_recording(pm, rng=rng, style=style)
    if fm_share > 0 and np.random.default_rng((plan["noise_seed"], _STREAM_ENGINE)).random() < fm_share:
        plan = {**plan, "engine": "fm"}
    perf = perform(pm, plan)
    if not perf.instruments:
        raise InputError("preview window holds no notes")
    return render_plan(perf, plan), plan


def render_plan(perf, plan: dict) -> bytes:
    """Synthesize a performed window with the plan's engine, add its effects, encode it.

    Parameters
    ----------
    perf : pretty_midi.PrettyMIDI
        From :func:`perform`.
    plan : dict
        From :func:`plan_recording`; ``plan['engine'] == 'fm'`` renders with
        :func:`msdmatch.demo.fm.render_fm` (patches drawn from the plan's
        noise seed), otherwise fluidsynth with ``plan['soundfont']``.

    Returns
    -------
    mp3 : bytes
    """
    if plan.get("engine") == "fm":
        from msdmatch.demo.fm import render_fm

        y = render_fm(perf, sr=RENDER_SR, seconds=PREVIEW_SECONDS, seed=plan["noise_seed"])
    else:
        y = render_window(perf, soundfont=plan["soundfont"], sr=RENDER_SR)
    y = apply_effects(y, sr=RENDER_SR, fx=plan["fx"], seed=plan["noise_seed"])
    return encode_mp3(y, sr=RENDER_SR, out_sr=plan["mp3_sr"], kbps=plan["mp3_kbps"])


def load_preview(path: str) -> tuple[np.ndarray, int]:
    """Decode a generated preview with soundfile.

    Parameters
    ----------
    path : str
        An ``.mp3`` written by the demo corpus.

    Returns
    -------
    y : np.ndarray [shape=(n_samples,), dtype=float32]
        Mono audio.
    sr : int
    """
    import soundfile as sf

    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return y.mean(axis=1), int(sr)


def preview_seconds(path: str) -> float:
    """Duration of a decoded preview in seconds (about 30 plus encoder padding)."""
    y, sr = load_preview(path)
    return y.size / sr
