"""A two-operator FM synthesizer in the manner of the OPL2/OPL3 chips, for training previews.

Training previews rendered with sample-based soundfonts only teach the nets
what sampled instruments sound like; game and tracker music is often FM.
This engine renders a cropped performance (:func:`msdmatch.demo.recording.perform`)
with randomly drawn FM patches, so a training corpus can hold FM timbres
without any FM emulator's code or patch bank.

Per melodic note: a modulator sine (with self-feedback) phase-modulates a
carrier; each operator has an OPL waveform (sine, half-sine, absolute sine,
quarter-sine pulses, alternating sine, camel sine, square, log-saw) and an
ADSR envelope; some patches are additive (both operators sound).  Drums are
made of sine sweeps and filtered noise.  A voice limit, like the chip's nine
melodic channels, cuts the oldest sounding note when a new one starts.

Everything is drawn from ``seed``: a patch per General MIDI program, so one
preview's instruments keep their timbre, and two previews with other seeds
sound different.  Audio is mono float32 ``(n_samples,)``, peak 1.
"""
from __future__ import annotations

import numpy as np

__all__ = ["draw_patch", "voice_limit", "render_fm"]

#: OPL2/OPL3 operator waveforms, as functions of the phase in radians.
_WAVES = (
    np.sin,
    lambda p: np.maximum(np.sin(p), 0.0),  # half-sine
    lambda p: np.abs(np.sin(p)),  # absolute sine
    lambda p: np.abs(np.sin(p)) * (np.mod(p, np.pi) < np.pi / 2),  # quarter-sine pulses
    lambda p: np.sin(2 * p) * (np.mod(p, 2 * np.pi) < np.pi),  # alternating sine
    lambda p: np.abs(np.sin(2 * p)) * (np.mod(p, 2 * np.pi) < np.pi),  # camel sine
    lambda p: np.sign(np.sin(p)),  # square
    lambda p: 1.0 - 2.0 * np.mod(p, 2 * np.pi) / (2 * np.pi),  # (log-)saw
)
_RATIOS = (0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


def draw_patch(rng: np.random.Generator) -> dict:
    """Draw one FM patch.

    Returns
    -------
    patch : dict
        ``mod_ratio``, ``car_ratio`` (frequency multiples of the note),
        ``index`` (peak modulation index, radians), ``index_decay``
        (seconds) and ``index_floor`` (sustained share of the index),
        ``feedback``, ``mod_wave``/``car_wave`` (indices into the OPL
        waveforms), ``additive``, ``attack``, ``decay``, ``sustain``,
        ``release`` (seconds or level), ``vibrato`` (depth in semitones).
    """
    percussive = rng.random() < 0.35
    return {
        "mod_ratio": float(rng.choice(_RATIOS)),
        "car_ratio": float(rng.choice((1.0, 1.0, 1.0, 2.0, 0.5))),
        "index": float(rng.uniform(0.3, 7.0)),
        "index_decay": float(rng.uniform(0.03, 1.5)),
        "index_floor": float(rng.uniform(0.0, 1.0)),
        "feedback": float(rng.uniform(0.0, 1.5)) if rng.random() < 0.5 else 0.0,
        "mod_wave": int(rng.integers(len(_WAVES))) if rng.random() < 0.4 else 0,
        "car_wave": int(rng.integers(len(_WAVES))) if rng.random() < 0.4 else 0,
        "additive": bool(rng.random() < 0.15),
        "attack": float(rng.uniform(0.001, 0.01) if percussive else rng.uniform(0.002, 0.12)),
        "decay": float(rng.uniform(0.1, 1.5) if percussive else rng.uniform(0.05, 1.0)),
        "sustain": 0.0 if percussive else float(rng.uniform(0.3, 1.0)),
        "release": float(rng.uniform(0.02, 0.4)),
        "vibrato": float(rng.uniform(0.05, 0.3)) if rng.random() < 0.2 else 0.0,
    }


def voice_limit(notes: np.ndarray, voices: int) -> np.ndarray:
    """Cut notes so that at most ``voices`` sound at once (the oldest gives way).

    Parameters
    ----------
    notes : np.ndarray [shape=(n, 2)]
        ``(start, end)`` in seconds, sorted by start.
    voices : int

    Returns
    -------
    ends : np.ndarray [shape=(n,)]
        New end times, each ``<=`` the old one and ``>= start``.
    """
    ends = notes[:, 1].copy()
    sounding: list[int] = []
    for k, start in enumerate(notes[:, 0]):
        sounding = [j for j in sounding if ends[j] > start]
        if len(sounding) >= voices:
            oldest = min(sounding, key=lambda j: notes[j, 0])
            ends[oldest] = start
            sounding.remove(oldest)
        sounding.append(k)
    return ends


def _envelope(n: int, n_on: int, sr: int, p: dict) -> np.ndarray:
    """ADSR level ``(n,)`` of a note held for ``n_on`` of its ``n`` samples."""
    t = np.arange(n) / sr
    level = np.where(t < p["attack"], t / p["attack"],
                     p["sustain"] + (1 - p["sustain"]) * np.exp(-(t - p["attack"]) / p["decay"] * 3))
    held = level[min(n_on, n) - 1] if n_on > 0 else 0.0
    after = t >= n_on / sr
    level[after] = held * np.exp(-(t[after] - n_on / sr) / p["release"] * 5)
    return level


def _melodic(pitch: int, n: int, n_on: int, sr: int, p: dict, gain: float) -> np.ndarray:
    t = np.arange(n) / sr
    f = 440.0 * 2 ** ((pitch - 69) / 12)
    if p["vibrato"]:
        f = f * 2 ** (p["vibrato"] / 12 * np.sin(2 * np.pi * 5.5 * t))
        base = 2 * np.pi * np.cumsum(f) / sr
    else:
        base = 2 * np.pi * f * t
    index = p["index"] * (p["index_floor"] + (1 - p["index_floor"]) * np.exp(-t / p["index_decay"]))
    mod_phase = p["mod_ratio"] * base
    mod = _WAVES[p["mod_wave"]](mod_phase + p["feedback"] * np.sin(mod_phase))
    car_phase = p["car_ratio"] * base
    if p["additive"]:
        y = 0.5 * (_WAVES[p["car_wave"]](car_phase) + mod)
    else:
        y = _WAVES[p["car_wave"]](car_phase + index * mod)
    return gain * _envelope(n, n_on, sr, p) * y


def _drum(pitch: int, n: int, sr: int, rng: np.random.Generator, gain: float) -> np.ndarray:
    """A drum hit ``(n,)``: kick and toms as sine sweeps, the rest as coloured noise."""
    from scipy import signal

    t = np.arange(n) / sr
    if pitch in (35, 36) or 41 <= pitch <= 50 and pitch not in (42, 44, 46, 49):
        f0, f1 = (150.0, 45.0) if pitch in (35, 36) else (300.0 + 15 * (pitch - 41), 90.0 + 10 * (pitch - 41))
        f = f1 + (f0 - f1) * np.exp(-t / 0.04)
        return gain * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.18)
    noise = rng.standard_normal(n)
    if pitch in (38, 40, 39, 37):  # snare, clap, rim: band noise and a tone
        sos = signal.butter(2, (800, 6000), btype="bandpass", fs=sr, output="sos")
        y = signal.sosfilt(sos, noise) + 0.5 * np.sin(2 * np.pi * 185 * t)
        return gain * y * np.exp(-t / 0.09)
    sos = signal.butter(2, 6000, btype="highpass", fs=sr, output="sos")
    decay = 0.6 if pitch in (49, 51, 52, 55, 57, 59) else (0.25 if pitch == 46 else 0.05)
    return gain * signal.sosfilt(sos, noise) * np.exp(-t / decay)


def render_fm(perf, *, sr: int, seconds: float, seed: int) -> np.ndarray:
    """Render a performance with FM patches drawn from ``seed``.

    Parameters
    ----------
    perf : pretty_midi.PrettyMIDI
        Notes in seconds from 0 (a cropped window).
    sr : int
    seconds : float
        Output length.
    seed : int
        Draws the patches (one per GM program), the voice limit and the noise.

    Returns
    -------
    y : np.ndarray [shape=(round(seconds*sr),), dtype=float32]
        Peak 1, or all zeros if nothing sounds.
    """
    rng = np.random.default_rng(seed)
    patch_seed = int(rng.integers(2**31))
    voices = int(rng.choice((9, 9, 18, 64)))  # OPL2 rhythm mode, melodic mode, OPL3, unlimited
    n_out = int(round(seconds * sr))
    out = np.zeros(n_out)
    melodic = [(n.start, n.end, n.pitch, n.velocity, inst.program)
               for inst in perf.instruments if not inst.is_drum for n in inst.notes]
    melodic.sort()
    patches: dict[int, dict] = {}
    if melodic:
        arr = np.array(melodic, dtype=float)
        ends = voice_limit(arr[:, :2], voices)
        for (start, _, pitch, vel, prog), end in zip(melodic, ends):
            if prog not in patches:
                patches[prog] = draw_patch(np.random.default_rng((patch_seed, prog)))
            p = patches[prog]
            s = int(start * sr)
            n_on = max(1, int((end - start) * sr))
            n = min(n_on + int(p["release"] * sr), n_out - s)
            if n > 0:
                out[s:s + n] += _melodic(pitch, n, n_on, sr, p, (vel / 127) ** 2)
    for inst in perf.instruments:
        if inst.is_drum:
            for note in inst.notes:
                s = int(note.start * sr)
                n = min(int(0.8 * sr), n_out - s)
                if n > 0:
                    out[s:s + n] += _drum(note.pitch, n, sr, rng, 0.7 * (note.velocity / 127) ** 2)
    peak = float(np.max(np.abs(out)))
    return (out / peak if peak > 0 else out).astype(np.float32)
