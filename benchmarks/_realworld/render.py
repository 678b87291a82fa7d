"""Follow a plan: perform the MIDI, render it, add effects, encode the MP3.

Audio arrays are mono float32 ``(n_samples,)``.  Renditions are rendered at
22,050 Hz (adplay and fluidsynth alike) and upsampled when the MP3 is 44.1 kHz;
distractors are read at their own rate and resampled to the MP3's.
"""
from __future__ import annotations

import io
import os
import subprocess
import tempfile

import numpy as np

from .midi import to_format0
from .plan import PREVIEW_SECONDS

#: Rate the renditions are rendered at.
RENDER_SR = 22050


def _time_map(plan: dict):
    """Score seconds -> performed seconds inside the window (NaN for omitted score time)."""
    so, st = plan["score_offset"], plan["stretch"]
    a = so + plan["skip_at"] / st
    b = a + plan["skip_len"]

    def f(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        s = np.where(t >= b, t - plan["skip_len"], t)
        s = np.where((t >= a) & (t < b), np.nan, s)
        return (s - so) * st

    return f


def perform(pm, plan: dict):
    """Apply a query plan's MIDI-level decisions and crop to its preview window.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The query piece; not modified.
    plan : dict
        From :func:`plan.plan_query`.

    Returns
    -------
    perf : pretty_midi.PrettyMIDI
        Notes, pitch bends and controls of the window, in seconds from its start.
    """
    import pretty_midi

    rng = np.random.default_rng(plan["seed"])
    tmap = _time_map(plan)
    loud = plan["drum_gain"]
    out = pretty_midi.PrettyMIDI(resolution=480)
    for i, src in enumerate(pm.instruments):
        if i == plan["drop"] or not src.notes:
            continue
        notes = [(n.start, n.end, n.pitch, n.velocity) for n in src.notes]
        if i == plan["double"]:
            sh = plan["double_shift"]
            notes += [(s, e, p + sh, max(1, v - 15)) for s, e, p, v in notes if 12 <= p + sh <= 115]
        arr = np.array(notes, dtype=np.float64)
        start, end = tmap(arr[:, 0]), tmap(arr[:, 1])
        start = start + rng.normal(0.0, plan["humanize_s"], start.size)
        end = np.where(np.isnan(end), start + (arr[:, 1] - arr[:, 0]) * plan["stretch"], end)
        scale = loud if src.is_drum else (0.8 if loud > 1.0 else 1.0)
        vel = np.clip(np.round(arr[:, 3] * scale + rng.integers(-plan["velocity_jitter"],
                                                                 plan["velocity_jitter"] + 1, start.size)), 1, 127)
        keep = np.isfinite(start) & (start < PREVIEW_SECONDS) & (end > np.maximum(start, 0.0))
        inst = pretty_midi.Instrument(program=src.program, is_drum=src.is_drum, name=src.name)
        for s, e, p, v in zip(start[keep], end[keep], arr[keep, 2], vel[keep]):
            s = max(0.0, float(s))
            inst.notes.append(pretty_midi.Note(int(v), int(p), s, max(s + 0.02, min(float(e), PREVIEW_SECONDS))))
        for b in src.pitch_bends:
            t = float(tmap(b.time))
            if 0.0 <= t < PREVIEW_SECONDS:
                inst.pitch_bends.append(pretty_midi.PitchBend(b.pitch, t))
        for c in src.control_changes:
            t = float(tmap(c.time))
            if t < PREVIEW_SECONDS and not np.isnan(t):  # controls set before the window still apply
                inst.control_changes.append(pretty_midi.ControlChange(c.number, c.value, max(0.0, t)))
        if inst.notes:
            out.instruments.append(inst)
    return out


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, y.size)] = y[:n]
    return out


def render_fluidsynth(perf, *, soundfont: str, sr: int = RENDER_SR) -> np.ndarray:
    """Render with fluidsynth and ``soundfont`` through :func:`msdmatch.io.synth.render` (30 s out)."""
    from msdmatch.io.synth import render

    return _fit(render(perf, sr=sr, soundfont=soundfont, tail=0.0), int(PREVIEW_SECONDS * sr))


def render_adplay(perf, *, adplay: str, lib_dir: str, sr: int = RENDER_SR) -> np.ndarray:
    """Render with adplay's OPL3 emulator (Nuked) from a format 0 copy of the MIDI (30 s out).

    Parameters
    ----------
    adplay : str
        The ``adplay`` binary (from the extracted Debian package).
    lib_dir : str
        Directory holding libadplug, libbinio and the other extracted libraries.
    """
    import soundfile as sf

    buf = io.BytesIO()
    perf.write(buf)
    with tempfile.TemporaryDirectory(prefix="rw-adplay-") as tmp:
        mid, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        with open(mid, "wb") as fh:
            fh.write(to_format0(buf.getvalue()))
        env = dict(os.environ, LD_LIBRARY_PATH=lib_dir)
        cmd = [adplay, "-O", "disk", "-d", wav, "-e", "nuked", "--stereo", "--16bit", "-f", str(sr), "-o", "-q", mid]
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        if r.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"adplay failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()[:200]}")
        y, got = sf.read(wav, dtype="float32", always_2d=True)
    if got != sr:
        raise RuntimeError(f"adplay wrote {got} Hz, asked for {sr}")
    return _fit(y.mean(axis=1), int(PREVIEW_SECONDS * sr))


def _filters(y: np.ndarray, *, sr: int, fx: dict) -> np.ndarray:
    from scipy import signal

    y = signal.sosfilt(signal.butter(2, fx["highpass"], btype="highpass", fs=sr, output="sos"), y)
    if fx["lowpass"] and fx["lowpass"] < sr / 2 - 100:
        y = signal.sosfilt(signal.butter(4, fx["lowpass"], fs=sr, output="sos"), y)
    return y


def _level(y: np.ndarray, gain_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(y)))
    return (y * (0.95 * 10 ** (gain_db / 20) / peak) if peak > 0 else y).astype(np.float32)


def apply_fx(y: np.ndarray, *, sr: int, fx: dict, seed: int) -> np.ndarray:
    """Reverb, high/low-pass EQ, noise at an SNR, then the gain (peak 0.95 dB-scaled).

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
    fx : dict
        ``plan["fx"]`` of a query plan.
    seed : int
        Seeds the impulse response and the noise.
    """
    from scipy import signal

    rng = np.random.default_rng(seed)
    y = y.astype(np.float64)
    if fx["reverb"]:
        n_ir = int(fx["rt"] * sr)
        ir = rng.standard_normal(n_ir) * np.exp(-6.9 * np.arange(n_ir) / n_ir)
        ir /= np.sqrt(np.sum(ir**2))
        y = (1 - fx["wet"]) * y + fx["wet"] * signal.fftconvolve(y, ir)[: y.size]
    y = _filters(y, sr=sr, fx=fx)
    rms = float(np.sqrt(np.mean(y**2)))
    if rms > 0:
        y = y + rng.standard_normal(y.size) * rms * 10 ** (-fx["snr_db"] / 20)
    return _level(y, fx["gain_db"])


def encode_mp3(y: np.ndarray, *, sr: int, out_sr: int, kbps: int) -> bytes:
    """Mono MP3 bytes (lameenc) at ``out_sr``, resampling ``y`` from ``sr`` if needed."""
    import lameenc
    from scipy import signal

    if out_sr != sr:
        g = np.gcd(int(out_sr), int(sr))
        y = signal.resample_poly(y, out_sr // g, sr // g).astype(np.float32)
    pcm = (np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
    enc = lameenc.Encoder()
    enc.set_bit_rate(int(kbps))
    enc.set_in_sample_rate(int(out_sr))
    enc.set_channels(1)
    enc.set_quality(7)
    return bytes(enc.encode(pcm.tobytes()) + enc.flush())


def query_recording(pm, plan: dict, *, soundfonts: dict, adplay: str, lib_dir: str) -> bytes:
    """MP3 bytes of one query's recording, following its plan.

    Raises
    ------
    RuntimeError
        If the window holds no notes or renders to silence.
    """
    perf = perform(pm, plan)
    if not perf.instruments:
        raise RuntimeError("preview window holds no notes")
    if plan["renderer"].startswith("adplay"):
        y = render_adplay(perf, adplay=adplay, lib_dir=lib_dir)
    else:
        y = render_fluidsynth(perf, soundfont=soundfonts[plan["renderer"]])
    if not np.any(y):
        raise RuntimeError(f"{plan['renderer']} rendered silence")
    y = apply_fx(y, sr=RENDER_SR, fx=plan["fx"], seed=plan["seed"])
    return encode_mp3(y, sr=RENDER_SR, out_sr=plan["mp3_sr"], kbps=plan["mp3_kbps"])


def distractor_preview(path: str, plan: dict) -> bytes:
    """MP3 bytes of a 30 s cut of produced music, following a distractor plan."""
    import soundfile as sf

    with sf.SoundFile(path) as fh:
        sr = fh.samplerate
        fh.seek(min(int(plan["offset"] * sr), max(0, fh.frames - int(PREVIEW_SECONDS * sr))))
        y = fh.read(int(PREVIEW_SECONDS * sr), dtype="float32", always_2d=True).mean(axis=1)
    if not np.any(y):
        raise RuntimeError("silent cut")
    y = _level(_filters(y.astype(np.float64), sr=sr, fx=plan["fx"]), plan["fx"]["gain_db"])
    return encode_mp3(y, sr=sr, out_sr=plan["mp3_sr"], kbps=plan["mp3_kbps"])
